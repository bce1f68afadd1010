//! The CLIP tokenizer of Stable Diffusion pipelines against transformers' `CLIPTokenizer`.
//!
//! `tests/data/sd/tokenizer_fixture.json` holds the ids, attention masks and BPE tokens that
//! transformers 4.x gave for each prompt with the real CLIP vocabulary under the SD 1 config
//! (pads with `<|endoftext|>`) and the SD 2 config (pads with `!`); it and the compressed
//! vocabulary are made by `tools/sd/make_tokenizer_fixture.py`.

mod common;

use std::io::Read;
use std::path::Path;

use melo::diffusion::{ClipTokenizer, Error};
use serde_json::Value;

fn data() -> std::path::PathBuf {
    common::repo().join("tests/data/sd")
}

/// A `tokenizer/` folder in a temporary directory: the shared vocabulary, decompressed, and the
/// named config's json files.
fn tokenizer_folder(config: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for name in ["vocab.json", "merges.txt"] {
        let gz = data().join("clip_vocab").join(format!("{name}.gz"));
        let file = std::fs::File::open(&gz)
            .unwrap_or_else(|e| panic!("{}: {e} (made by tools/sd/make_tokenizer_fixture.py)", gz.display()));
        let mut text = Vec::new();
        flate2::read::GzDecoder::new(file).read_to_end(&mut text).unwrap();
        std::fs::write(dir.path().join(name), text).unwrap();
    }
    let src = data().join(format!("tokenizer_{config}"));
    for name in ["tokenizer_config.json", "special_tokens_map.json"] {
        std::fs::copy(src.join(name), dir.path().join(name)).unwrap_or_else(|e| {
            panic!("{}: {e} (made by tools/sd/make_tokenizer_fixture.py)", src.join(name).display())
        });
    }
    dir
}

fn fixture() -> Value {
    let path = data().join("tokenizer_fixture.json");
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e} (made by tools/sd/make_tokenizer_fixture.py)", path.display()));
    serde_json::from_str(&text).unwrap()
}

fn numbers(v: &Value) -> Vec<u32> {
    v.as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect()
}

/// Every prompt of the fixture gives transformers' ids, mask and BPE tokens under `config`.
fn check_config(config: &str) {
    let fx = fixture();
    let prompts: Vec<&str> = fx["prompts"].as_array().unwrap().iter().map(|p| p.as_str().unwrap()).collect();
    let expected = &fx["configs"][config];
    let cases = expected["cases"].as_array().unwrap();
    assert_eq!(cases.len(), prompts.len());
    assert!(prompts.len() >= 40, "the fixture has {} prompts", prompts.len());

    let dir = tokenizer_folder(config);
    let tok = ClipTokenizer::load(dir.path()).unwrap();
    assert_eq!(tok.model_max_length() as u64, expected["model_max_length"].as_u64().unwrap());
    assert_eq!(tok.pad_id() as u64, expected["pad_token_id"].as_u64().unwrap());
    assert_eq!(tok.bos_id() as u64, expected["bos_token_id"].as_u64().unwrap());
    assert_eq!(tok.eos_id() as u64, expected["eos_token_id"].as_u64().unwrap());
    assert_eq!(tok.vocab_size(), 49408);

    let mut failures = Vec::new();
    for (prompt, case) in prompts.iter().zip(cases) {
        let want_ids = numbers(&case["ids"]);
        let want_mask = numbers(&case["mask"]);
        let want_tokens: Vec<&str> = case["tokens"].as_array().unwrap().iter().map(|t| t.as_str().unwrap()).collect();
        let got = tok.encode_padded(prompt).unwrap();
        let got_tokens = tok.tokenize(prompt).unwrap();
        if got.ids != want_ids || got.attention_mask != want_mask || got_tokens != want_tokens {
            failures.push(format!(
                "{prompt:?}\n  want ids  {want_ids:?}\n  got ids   {:?}\n  want mask {want_mask:?}\n  got mask  {:?}\n  want tokens {want_tokens:?}\n  got tokens  {got_tokens:?}",
                got.ids, got.attention_mask
            ));
        }
        assert_eq!(got.ids.len(), tok.model_max_length());
    }
    assert!(
        failures.is_empty(),
        "{config}: {} of {} prompts differ from transformers:\n{}",
        failures.len(),
        prompts.len(),
        failures.join("\n")
    );
}

#[test]
fn sd1_config_matches_transformers_ids_and_masks() {
    check_config("sd1");
}

#[test]
fn sd2_config_matches_transformers_ids_and_masks() {
    check_config("sd2");
}

#[test]
fn fixture_covers_both_paddings_and_truncation() {
    // The two configs must really differ where the pad token matters, or the SD 2 test would
    // prove nothing beyond SD 1.
    let fx = fixture();
    let (sd1, sd2) = (&fx["configs"]["sd1"], &fx["configs"]["sd2"]);
    assert_eq!(sd1["pad_token_id"], 49407);
    assert_eq!(sd2["pad_token_id"], 0);
    let prompts = fx["prompts"].as_array().unwrap();
    let differ = (0..prompts.len()).filter(|&i| sd1["cases"][i]["ids"] != sd2["cases"][i]["ids"]).count();
    assert!(differ > prompts.len() / 2, "only {differ} prompts differ between the SD 1 and SD 2 configs");
    let full = sd1["cases"].as_array().unwrap().iter().filter(|c| numbers(&c["mask"]).iter().all(|&m| m == 1)).count();
    assert!(full >= 2, "the fixture needs over-long prompts");
}

// ---- bad input ----------------------------------------------------------------------------

/// A small valid folder: bytes a, b, c (with and without `</w>`), one merge, the specials.
fn mini_folder() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        "vocab.json",
        r#"{"a":0,"b":1,"c":2,"a</w>":3,"b</w>":4,"c</w>":5,"ab</w>":6,"<|startoftext|>":7,"<|endoftext|>":8,"!":9}"#,
    );
    write(dir.path(), "merges.txt", "#version: 0.2\na b</w>\n");
    write(dir.path(), "tokenizer_config.json", r#"{"model_max_length": 8, "pad_token": "!"}"#);
    dir
}

fn write(dir: &Path, name: &str, text: &str) {
    std::fs::write(dir.join(name), text).unwrap();
}

fn load_err(dir: &Path) -> (Error, String) {
    let e = ClipTokenizer::load(dir).expect_err("a broken folder must not load");
    let msg = e.to_string();
    assert!(!msg.contains('\n'), "error is not one line: {msg}");
    (e, msg)
}

#[test]
fn mini_folder_loads_and_encodes() {
    // The bad-input tests below break one thing each of this folder.
    let dir = mini_folder();
    let tok = ClipTokenizer::load(dir.path()).unwrap();
    assert_eq!(tok.tokenize("AB c!").unwrap(), vec!["ab</w>", "c</w>", "!"]);
    let e = tok.encode_padded("AB c!").unwrap();
    assert_eq!(e.ids, vec![7, 6, 5, 9, 8, 9, 9, 9]);
    assert_eq!(e.attention_mask, vec![1, 1, 1, 1, 1, 0, 0, 0]);
    // Cut to model_max_length − 2 with EOS last.
    let e = tok.encode_padded("a a a a a a a a a").unwrap();
    assert_eq!(e.ids, vec![7, 3, 3, 3, 3, 3, 3, 8]);
    assert!(e.truncated);
    let e = tok.encode_padded("a a a a a a").unwrap();
    assert_eq!(e.ids, vec![7, 3, 3, 3, 3, 3, 3, 8]);
    assert!(!e.truncated, "six ids fit exactly");
}

#[test]
fn giant_word_is_refused_unless_past_the_cut() {
    let dir = mini_folder();
    let tok = ClipTokenizer::load(dir.path()).unwrap();
    let giant = "b".repeat(5000);
    let e = tok.encode(&giant).expect_err("a 5000-letter word must be refused");
    assert!(matches!(e, Error::Input(_)), "{e}");
    assert!(e.to_string().contains("the text has a word of 5000 bytes"), "{e}");
    assert!(tok.encode_padded(&format!("x {giant}")).is_err());
    // The pipeline's call stops at the cut, so a giant word after it is never looked at.
    let e = tok.encode_padded(&format!("a a a a a a a {giant}")).unwrap();
    assert_eq!(e.ids, vec![7, 3, 3, 3, 3, 3, 3, 8]);
    assert!(e.truncated);
}

#[test]
fn missing_folder_or_files_are_named() {
    let dir = mini_folder();
    let (e, msg) = load_err(&dir.path().join("nope"));
    assert!(matches!(e, Error::Input(_)) && msg.contains("not a tokenizer folder"), "{msg}");
    for name in ["vocab.json", "merges.txt", "tokenizer_config.json"] {
        let dir = mini_folder();
        std::fs::remove_file(dir.path().join(name)).unwrap();
        let (e, msg) = load_err(dir.path());
        match e {
            Error::Io(io) => {
                assert!(io.path.ends_with(name), "{msg}");
                assert_eq!(io.source.kind(), std::io::ErrorKind::NotFound);
            }
            other => panic!("{name} missing: {other}"),
        }
    }
}

#[test]
fn broken_json_is_reported_as_json() {
    let dir = mini_folder();
    write(dir.path(), "vocab.json", r#"{"a": 0,"#);
    let (e, msg) = load_err(dir.path());
    assert!(matches!(e, Error::Json { what: "vocabulary", .. }) && msg.contains("vocab.json"), "{msg}");

    let dir = mini_folder();
    write(dir.path(), "vocab.json", r#"{"a": -1}"#);
    let (e, msg) = load_err(dir.path());
    assert!(matches!(e, Error::Json { what: "vocabulary", .. }) && msg.contains("\"a\" has id -1"), "{msg}");

    let dir = mini_folder();
    write(dir.path(), "tokenizer_config.json", "[1, 2]");
    let (e, msg) = load_err(dir.path());
    assert!(matches!(e, Error::Json { what: "tokenizer config", .. }) && msg.contains("found a list"), "{msg}");

    let dir = mini_folder();
    write(dir.path(), "special_tokens_map.json", "{pad");
    let (e, msg) = load_err(dir.path());
    assert!(matches!(e, Error::Json { what: "special tokens map", .. }), "{msg}");
}

#[test]
fn merges_line_that_is_not_two_tokens() {
    let dir = mini_folder();
    write(dir.path(), "merges.txt", "#version: 0.2\na b</w>\na b c\n");
    let (e, msg) = load_err(dir.path());
    assert!(matches!(e, Error::Tokenizer { .. }), "{msg}");
    assert!(msg.contains("merges.txt: line 3: \"a b c\" is not a merge of two tokens"), "{msg}");

    let dir = mini_folder();
    write(dir.path(), "merges.txt", "#version: 0.2\n");
    let (_, msg) = load_err(dir.path());
    assert!(msg.contains("no merges after the header line"), "{msg}");

    let dir = mini_folder();
    std::fs::write(dir.path().join("merges.txt"), b"#version: 0.2\n\xff\xfe b\n").unwrap();
    let (_, msg) = load_err(dir.path());
    assert!(msg.contains("merges.txt: not UTF-8 text"), "{msg}");
}

#[test]
fn special_token_missing_from_vocab() {
    let dir = mini_folder();
    write(dir.path(), "tokenizer_config.json", r#"{"model_max_length": 8, "pad_token": "<pad>"}"#);
    let (e, msg) = load_err(dir.path());
    assert!(matches!(e, Error::Tokenizer { .. }), "{msg}");
    assert!(msg.contains("pad_token \"<pad>\" is not in vocab.json"), "{msg}");

    // The map overrides the config, as transformers reads it.
    let dir = mini_folder();
    write(dir.path(), "special_tokens_map.json", r#"{"pad_token": {"content": "<pad>"}}"#);
    let (_, msg) = load_err(dir.path());
    assert!(msg.contains("pad_token \"<pad>\" is not in vocab.json"), "{msg}");

    let dir = mini_folder();
    write(dir.path(), "tokenizer_config.json", r#"{"model_max_length": 8, "pad_token": null}"#);
    let (_, msg) = load_err(dir.path());
    assert!(msg.contains("pad_token is null"), "{msg}");
}

#[test]
fn special_token_that_is_not_a_token_or_single_word() {
    let dir = mini_folder();
    write(dir.path(), "tokenizer_config.json", r#"{"model_max_length": 8, "pad_token": 5}"#);
    let (_, msg) = load_err(dir.path());
    assert!(msg.contains("pad_token: 5 is not a token"), "{msg}");

    write(dir.path(), "tokenizer_config.json", r#"{"model_max_length": 8, "bos_token": {"lstrip": true}}"#);
    let (_, msg) = load_err(dir.path());
    assert!(msg.contains("bos_token: {\"lstrip\":true} has no \"content\" string"), "{msg}");

    write(
        dir.path(),
        "tokenizer_config.json",
        r#"{"model_max_length": 8, "pad_token": {"content": "!", "single_word": true}}"#,
    );
    let (_, msg) = load_err(dir.path());
    assert!(msg.contains("pad_token: \"!\" is single_word, which this tokenizer does not implement"), "{msg}");
}

#[test]
fn added_token_id_that_contradicts_the_vocabulary() {
    let dir = mini_folder();
    write(
        dir.path(),
        "tokenizer_config.json",
        r#"{"model_max_length": 8, "pad_token": "!", "added_tokens_decoder": {"49407": {"content": "<|endoftext|>", "special": true}}}"#,
    );
    let (e, msg) = load_err(dir.path());
    assert!(matches!(e, Error::Tokenizer { .. }), "{msg}");
    assert!(msg.contains("added token \"<|endoftext|>\" has id 49407, but vocab.json gives it id 8"), "{msg}");

    let dir = mini_folder();
    write(
        dir.path(),
        "tokenizer_config.json",
        r#"{"model_max_length": 8, "added_tokens_decoder": {"x": {"content": "!"}}}"#,
    );
    let (_, msg) = load_err(dir.path());
    assert!(msg.contains("added_tokens_decoder key \"x\" is not a token id"), "{msg}");
}

#[test]
fn model_max_length_missing_or_unusable() {
    let dir = mini_folder();
    write(dir.path(), "tokenizer_config.json", r#"{"pad_token": "!"}"#);
    let (_, msg) = load_err(dir.path());
    assert!(msg.contains("no model_max_length"), "{msg}");
    for bad in ["1", "1e30", "-5", "\"77\""] {
        write(dir.path(), "tokenizer_config.json", &format!(r#"{{"model_max_length": {bad}}}"#));
        let (_, msg) = load_err(dir.path());
        assert!(msg.contains("model_max_length") && msg.contains("is not a whole number in 2..="), "{bad}: {msg}");
    }
}

#[test]
fn huge_files_are_refused_before_reading() {
    let dir = mini_folder();
    // A sparse file: 65 MB long, no disk used.
    let f = std::fs::File::create(dir.path().join("vocab.json")).unwrap();
    f.set_len(65 << 20).unwrap();
    let (e, msg) = load_err(dir.path());
    assert!(matches!(e, Error::Tokenizer { .. }), "{msg}");
    assert!(msg.contains("vocab.json: 68157440 bytes, more than the 67108864 a tokenizer file may have"), "{msg}");

    let dir = mini_folder();
    let f = std::fs::File::create(dir.path().join("tokenizer_config.json")).unwrap();
    f.set_len(2 << 20).unwrap();
    let (_, msg) = load_err(dir.path());
    assert!(msg.contains("tokenizer_config.json: 2097152 bytes, more than the 1048576"), "{msg}");
}

#[test]
fn bad_input_leaves_the_folder_unchanged() {
    let dir = mini_folder();
    write(dir.path(), "merges.txt", "#version: 0.2\na b c\n");
    let before: Vec<_> = ["vocab.json", "merges.txt", "tokenizer_config.json"]
        .iter()
        .map(|n| std::fs::read(dir.path().join(n)).unwrap())
        .collect();
    load_err(dir.path());
    let after: Vec<_> = ["vocab.json", "merges.txt", "tokenizer_config.json"]
        .iter()
        .map(|n| std::fs::read(dir.path().join(n)).unwrap())
        .collect();
    assert_eq!(before, after);
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 3);
}
