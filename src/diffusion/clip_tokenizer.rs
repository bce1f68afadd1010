//! The CLIP byte-level BPE tokenizer of a Stable Diffusion pipeline's `tokenizer/` folder
//! (`vocab.json`, `merges.txt`, `tokenizer_config.json`, `special_tokens_map.json`).
//!
//! It reproduces what transformers' Python `CLIPTokenizer` (transformers 4.x, the class
//! `StableDiffusionPipeline` loads) gives when `ftfy` is not installed, and what the pipeline
//! asks of it: `tokenizer(prompt, padding="max_length", max_length=model_max_length,
//! truncation=True)`. Step by step:
//!
//! 1. the special tokens the config names (BOS, EOS, UNK, PAD, `added_tokens_decoder`) are cut
//!    out of the raw text first and map straight to their ids — so with SD 2's pad token `!`,
//!    every `!` in a prompt is the pad id, not part of a BPE word;
//! 2. each remaining piece is cleaned like transformers' `BasicTokenizer(strip_accents=False,
//!    do_split_on_punc=False)`: NUL, U+FFFD and control/format characters dropped, whitespace
//!    to spaces, CJK ideographs set apart as words, NFC, split on whitespace, each word
//!    lower-cased;
//! 3. the words are split by CLIP's regex, each piece's UTF-8 bytes are mapped to printable
//!    characters (GPT-2's byte-to-unicode table), `</w>` marks the end of the word, and BPE
//!    merges pairs in the order of `merges.txt`;
//! 4. the ids are cut to `model_max_length − 2`, framed by BOS and EOS and padded with the pad
//!    token to `model_max_length`; the attention mask is 1 on BOS, the text and EOS.
//!
//! Every setting comes from the folder's files. Parity with transformers is checked in
//! `tests/sd_tokenizer.rs` against ids made by `tools/sd/make_tokenizer_fixture.py`.

use std::collections::HashMap;
use std::io::Read;
use std::path::Path;

use regex::Regex;
use serde_json::Value;
use unicode_general_category::{get_general_category, GeneralCategory};
use unicode_normalization::UnicodeNormalization;

use super::error::{Error, Result};

pub const VOCAB_FILE: &str = "vocab.json";
pub const MERGES_FILE: &str = "merges.txt";
pub const TOKENIZER_CONFIG_FILE: &str = "tokenizer_config.json";
pub const SPECIAL_TOKENS_MAP_FILE: &str = "special_tokens_map.json";

/// The real CLIP vocabulary is 1.0 MB (`vocab.json`) and 0.5 MB (`merges.txt`); a file many
/// times that is not a tokenizer, and reading it whole would only exhaust memory.
pub const MAX_VOCAB_BYTES: u64 = 64 << 20;
/// `tokenizer_config.json` and `special_tokens_map.json` are a few hundred bytes.
pub const MAX_CONFIG_BYTES: u64 = 1 << 20;
/// A text encoder's position table is this long at most in any CLIP the pipelines use (77);
/// the bound only keeps a broken config from asking for gigantic padded batches.
pub const MAX_MODEL_MAX_LENGTH: usize = 1 << 16;

/// The longest word (one match of CLIP's pattern: a run of letters or of punctuation) that is
/// tokenized; a 4 KB word of random letters takes about a second in a debug build.
pub const MAX_WORD_BYTES: usize = 4096;

/// transformers reads `merges.txt` as `read().strip().split("\n")[1 : 49152 - 256 - 2 + 1]`:
/// the first line (the `#version` header) is skipped unread and at most this many merges are
/// used — CLIP's 49408-entry vocabulary is 256 bytes × 2 (with and without `</w>`), these merges
/// and the two specials.
pub const MAX_MERGES: usize = 49152 - 256 - 2;

/// transformers' CLIPTokenizer defaults, used where the config names no such token.
const DEFAULT_BOS: &str = "<|startoftext|>";
const DEFAULT_EOS: &str = "<|endoftext|>";
const DEFAULT_UNK: &str = "<|endoftext|>";
const DEFAULT_PAD: &str = "<|endoftext|>";

/// CLIP's pre-tokenizer pattern, compiled case-insensitively as transformers does (`re.IGNORECASE`
/// with the `regex` module).
const PATTERN: &str =
    r"(?i)<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+";

/// One prompt as the text encoder takes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Encoding {
    /// BOS, the text's ids (cut to fit), EOS, then the pad id up to `model_max_length`.
    pub ids: Vec<u32>,
    /// 1 for BOS, text and EOS, 0 for padding.
    pub attention_mask: Vec<u32>,
    /// Whether the text had more ids than fit and was cut.
    pub truncated: bool,
}

/// A token the config declares as a whole (a special or added token): found in the raw text
/// before any cleanup and mapped to its id without BPE.
#[derive(Debug, Clone)]
struct AddedToken {
    content: String,
    id: u32,
    /// Strip whitespace on the token's left / right side (transformers' `lstrip` / `rstrip`).
    lstrip: bool,
    rstrip: bool,
}

#[derive(Debug)]
pub struct ClipTokenizer {
    encoder: HashMap<String, u32>,
    /// Rank of the merge `"first second"` (lower merges first).
    bpe_ranks: HashMap<String, usize>,
    byte_encoder: [char; 256],
    pattern: Regex,
    added: Vec<AddedToken>,
    bos_id: u32,
    eos_id: u32,
    pad_id: u32,
    unk_id: Option<u32>,
    model_max_length: usize,
}

impl ClipTokenizer {
    /// Loads a `tokenizer/` folder. `vocab.json`, `merges.txt` and `tokenizer_config.json` are
    /// required; `special_tokens_map.json`, when present, overrides the config's special tokens
    /// (as transformers' `from_pretrained` does for configs without `added_tokens_decoder`).
    pub fn load(dir: &Path) -> Result<Self> {
        if !dir.is_dir() {
            return Err(Error::Input(format!("{}: not a tokenizer folder", dir.display())));
        }
        let vocab_path = dir.join(VOCAB_FILE);
        let encoder = parse_vocab(&vocab_path, &read_limited(&vocab_path, MAX_VOCAB_BYTES)?)?;
        let merges_path = dir.join(MERGES_FILE);
        let bpe_ranks = parse_merges(&merges_path, &read_limited(&merges_path, MAX_VOCAB_BYTES)?)?;

        let config_path = dir.join(TOKENIZER_CONFIG_FILE);
        let mut config = parse_json_object(&config_path, "tokenizer config")?;
        let map_path = dir.join(SPECIAL_TOKENS_MAP_FILE);
        // transformers reads the map only for configs without `added_tokens_decoder` (the
        // format before 4.34, which the SD 1/2 folders use); newer configs are complete.
        if !config.contains_key("added_tokens_decoder") && map_path.exists() {
            for (key, value) in parse_json_object(&map_path, "special tokens map")? {
                config.insert(key, value);
            }
        }
        let config_err = |reason: String| Error::Tokenizer { path: config_path.clone(), reason };

        let model_max_length = match config.get("model_max_length") {
            Some(v) => v.as_u64().filter(|&n| (2..=MAX_MODEL_MAX_LENGTH as u64).contains(&n)).ok_or_else(|| {
                config_err(format!("model_max_length {v} is not a whole number in 2..={MAX_MODEL_MAX_LENGTH}"))
            })? as usize,
            None => return Err(config_err("no model_max_length (the prompt length the text encoder takes)".into())),
        };

        // Tokens the config lists with their ids (transformers ≥ 4.34 writes them).
        let mut added: Vec<AddedToken> = Vec::new();
        if let Some(decoder) = config.get("added_tokens_decoder") {
            let decoder =
                decoder.as_object().ok_or_else(|| config_err("added_tokens_decoder is not an object".into()))?;
            for (key, value) in decoder {
                let id: u32 = key
                    .parse()
                    .map_err(|_| config_err(format!("added_tokens_decoder key {key:?} is not a token id")))?;
                let (content, lstrip, rstrip) =
                    token_spec(value).map_err(|why| config_err(format!("added_tokens_decoder entry {id}: {why}")))?;
                match encoder.get(&content) {
                    Some(&vocab_id) if vocab_id == id => {}
                    _ => {
                        return Err(config_err(format!(
                            "added token {content:?} has id {id}, but vocab.json gives it {}",
                            encoder.get(&content).map_or("no id".to_string(), |i| format!("id {i}"))
                        )))
                    }
                }
                added.push(AddedToken { content, id, lstrip, rstrip });
            }
        }

        let mut special = |key: &str, default: Option<&str>| -> Result<Option<u32>> {
            let (content, lstrip, rstrip) = match config.get(key) {
                None => match default {
                    Some(d) => (d.to_string(), false, false),
                    None => return Ok(None),
                },
                Some(Value::Null) => return Ok(None),
                Some(v) => token_spec(v).map_err(|why| config_err(format!("{key}: {why}")))?,
            };
            if let Some(a) = added.iter().find(|a| a.content == content) {
                return Ok(Some(a.id));
            }
            let id =
                *encoder.get(&content).ok_or_else(|| config_err(format!("{key} {content:?} is not in vocab.json")))?;
            added.push(AddedToken { content, id, lstrip, rstrip });
            Ok(Some(id))
        };
        let bos_id = special("bos_token", Some(DEFAULT_BOS))?
            .ok_or_else(|| config_err("bos_token is null; the text encoder needs a start token".into()))?;
        let eos_id = special("eos_token", Some(DEFAULT_EOS))?
            .ok_or_else(|| config_err("eos_token is null; the text encoder needs an end token".into()))?;
        let unk_id = special("unk_token", Some(DEFAULT_UNK))?;
        let pad_id = special("pad_token", Some(DEFAULT_PAD))?
            .ok_or_else(|| config_err("pad_token is null; prompts are padded to model_max_length".into()))?;
        if let Some(extra) = config.get("additional_special_tokens") {
            let list = extra.as_array().ok_or_else(|| config_err("additional_special_tokens is not a list".into()))?;
            for v in list {
                let (content, lstrip, rstrip) =
                    token_spec(v).map_err(|why| config_err(format!("additional_special_tokens: {why}")))?;
                if added.iter().any(|a| a.content == content) {
                    continue;
                }
                let id = *encoder
                    .get(&content)
                    .ok_or_else(|| config_err(format!("additional special token {content:?} is not in vocab.json")))?;
                added.push(AddedToken { content, id, lstrip, rstrip });
            }
        }
        // An empty added token would match everywhere and cut the text into nothing.
        if added.iter().any(|a| a.content.is_empty()) {
            return Err(config_err("a special token is the empty string".into()));
        }

        Ok(Self {
            encoder,
            bpe_ranks,
            byte_encoder: bytes_to_unicode(),
            pattern: Regex::new(PATTERN).expect("the CLIP pattern is a valid regex"),
            added,
            bos_id,
            eos_id,
            pad_id,
            unk_id,
            model_max_length,
        })
    }

    pub fn model_max_length(&self) -> usize {
        self.model_max_length
    }
    pub fn bos_id(&self) -> u32 {
        self.bos_id
    }
    pub fn eos_id(&self) -> u32 {
        self.eos_id
    }
    pub fn pad_id(&self) -> u32 {
        self.pad_id
    }
    pub fn vocab_size(&self) -> usize {
        self.encoder.len()
    }

    /// The BPE tokens of `text` (without BOS/EOS), as transformers' `tokenize` gives them.
    pub fn tokenize(&self, text: &str) -> Result<Vec<String>> {
        let mut out = Vec::new();
        self.walk(text, |tokens| {
            out.extend_from_slice(tokens);
            true
        })?;
        Ok(out)
    }

    /// The ids of `text` without BOS/EOS, uncut. A BPE token missing from the vocabulary becomes
    /// the unknown token's id; without one it is an error.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        self.encode_up_to(text, usize::MAX)
    }

    /// `text` as a Stable Diffusion pipeline feeds it to the text encoder: BOS + ids (cut to
    /// `model_max_length − 2`) + EOS, padded to `model_max_length`.
    pub fn encode_padded(&self, text: &str) -> Result<Encoding> {
        let n = self.model_max_length;
        // One id past the cut tells whether the text was cut; the rest is never tokenized.
        let mut body = self.encode_up_to(text, n - 1)?;
        let truncated = body.len() > n - 2;
        body.truncate(n - 2);
        let mut ids = Vec::with_capacity(n);
        ids.push(self.bos_id);
        ids.extend_from_slice(&body);
        ids.push(self.eos_id);
        let mut attention_mask = vec![1; ids.len()];
        attention_mask.resize(n, 0);
        ids.resize(n, self.pad_id);
        Ok(Encoding { ids, attention_mask, truncated })
    }

    /// The first ids of `text`, at least `limit` of them where the text has that many.
    fn encode_up_to(&self, text: &str, limit: usize) -> Result<Vec<u32>> {
        let mut ids = Vec::new();
        let mut unknown = None;
        self.walk(text, |tokens| {
            for tok in tokens {
                match self.encoder.get(tok).copied().or(self.unk_id) {
                    Some(id) => ids.push(id),
                    None => {
                        unknown = Some(tok.clone());
                        return false;
                    }
                }
            }
            ids.len() < limit
        })?;
        match unknown {
            Some(tok) => Err(Error::Input(format!(
                "token {tok:?} is not in the vocabulary and the tokenizer has no unknown token"
            ))),
            None => Ok(ids),
        }
    }

    /// Hands the tokens of `text` to `each`, one added token or one pre-token's BPE at a time,
    /// until `each` returns false. transformers' `tokenize`, step by step.
    fn walk(&self, text: &str, mut each: impl FnMut(&[String]) -> bool) -> Result<()> {
        let mut tokens = Vec::new();
        for piece in self.split_added(text) {
            match piece {
                Piece::Added(a) => {
                    if !each(std::slice::from_ref(&a.content)) {
                        return Ok(());
                    }
                }
                Piece::Text(t) => {
                    let cleaned = basic_tokenize(&t).join(" ");
                    for m in self.pattern.find_iter(&cleaned) {
                        // BPE takes time quadratic in a word's length; no caption has such a
                        // word, and a file of garbage must not stall an audit for hours.
                        if m.len() > MAX_WORD_BYTES {
                            return Err(Error::Input(format!(
                                "the text has a word of {} bytes (\"{}\"); at most {MAX_WORD_BYTES} are tokenized",
                                m.len(),
                                truncate_for_message(m.as_str())
                            )));
                        }
                        let mapped: String = m.as_str().bytes().map(|b| self.byte_encoder[b as usize]).collect();
                        tokens.clear();
                        self.bpe(&mapped, &mut tokens);
                        if !each(&tokens) {
                            return Ok(());
                        }
                    }
                }
            }
        }
        Ok(())
    }

    /// Cuts the raw text at the added tokens, leftmost first and the longest where several
    /// start at one place (transformers' trie), honouring their `lstrip`/`rstrip`.
    fn split_added(&self, text: &str) -> Vec<Piece<'_>> {
        let mut pieces: Vec<Piece<'_>> = Vec::new();
        let mut start = 0; // start of the pending text piece
        let mut i = 0;
        while i < text.len() {
            let rest = &text[i..];
            let best =
                self.added.iter().filter(|a| rest.starts_with(a.content.as_str())).max_by_key(|a| a.content.len());
            match best {
                Some(a) => {
                    pieces.push(Piece::Text(text[start..i].to_string()));
                    pieces.push(Piece::Added(a));
                    i += a.content.len();
                    start = i;
                }
                None => i += rest.chars().next().map_or(1, char::len_utf8),
            }
        }
        pieces.push(Piece::Text(text[start..].to_string()));
        for k in 0..pieces.len() {
            if let Piece::Added(a) = pieces[k] {
                if a.lstrip && k > 0 {
                    if let Piece::Text(t) = &mut pieces[k - 1] {
                        *t = t.trim_end().to_string();
                    }
                }
                if a.rstrip && k + 1 < pieces.len() {
                    if let Piece::Text(t) = &mut pieces[k + 1] {
                        *t = t.trim_start().to_string();
                    }
                }
            }
        }
        pieces.retain(|p| !matches!(p, Piece::Text(t) if t.is_empty()));
        pieces
    }

    /// Merges the characters of one pre-token, the last one carrying `</w>`, by merge rank.
    fn bpe(&self, token: &str, out: &mut Vec<String>) {
        // transformers' cache starts with these two, so they never get `</w>`.
        if token == DEFAULT_BOS || token == DEFAULT_EOS {
            out.push(token.to_string());
            return;
        }
        let mut word: Vec<String> = token.chars().map(String::from).collect();
        match word.last_mut() {
            Some(last) => last.push_str("</w>"),
            None => return,
        }
        let mut key = String::new();
        while word.len() > 1 {
            let mut best: Option<(usize, usize)> = None; // (rank, position of the pair)
            for (pos, pair) in word.windows(2).enumerate() {
                key.clear();
                key.push_str(&pair[0]);
                key.push(' ');
                key.push_str(&pair[1]);
                if let Some(&rank) = self.bpe_ranks.get(&key) {
                    if best.is_none_or(|(r, _)| rank < r) {
                        best = Some((rank, pos));
                    }
                }
            }
            let Some((_, pos)) = best else { break };
            let (first, second) = (word[pos].clone(), word[pos + 1].clone());
            // Every occurrence of the pair, left to right, as transformers merges them.
            let mut merged = Vec::with_capacity(word.len());
            let mut i = 0;
            while i < word.len() {
                if i + 1 < word.len() && word[i] == first && word[i + 1] == second {
                    merged.push(format!("{first}{second}"));
                    i += 2;
                } else {
                    merged.push(std::mem::take(&mut word[i]));
                    i += 1;
                }
            }
            word = merged;
        }
        out.extend(word);
    }
}

enum Piece<'a> {
    Added(&'a AddedToken),
    Text(String),
}

/// transformers' `BasicTokenizer(do_lower_case=True, strip_accents=False,
/// do_split_on_punc=False, tokenize_chinese_chars=True).tokenize`: the cleanup CLIPTokenizer
/// applies when `ftfy` is absent.
fn basic_tokenize(text: &str) -> Vec<String> {
    let mut cleaned = String::with_capacity(text.len());
    for c in text.chars() {
        if c == '\0' || c == '\u{FFFD}' || is_control(c) {
            continue;
        }
        if is_whitespace(c) {
            cleaned.push(' ');
        } else if is_cjk_ideograph(c) {
            cleaned.push(' ');
            cleaned.push(c);
            cleaned.push(' ');
        } else {
            cleaned.push(c);
        }
    }
    let normalized: String = cleaned.nfc().collect();
    // Python's `str.split()` on what is left: after the cleanup the only whitespace besides
    // the space can be U+2028/U+2029, which both Python and Rust count as whitespace.
    normalized.split_whitespace().map(str::to_lowercase).collect()
}

/// BasicTokenizer's `_is_control`: any category `C*` except tab, newline and carriage return.
fn is_control(c: char) -> bool {
    if matches!(c, '\t' | '\n' | '\r') {
        return false;
    }
    matches!(
        get_general_category(c),
        GeneralCategory::Control
            | GeneralCategory::Format
            | GeneralCategory::Unassigned
            | GeneralCategory::PrivateUse
            | GeneralCategory::Surrogate
    )
}

/// BasicTokenizer's `_is_whitespace`: space, tab, newline, carriage return and category `Zs`.
fn is_whitespace(c: char) -> bool {
    matches!(c, ' ' | '\t' | '\n' | '\r') || get_general_category(c) == GeneralCategory::SpaceSeparator
}

/// BasicTokenizer's `_is_chinese_char`: the CJK Unified Ideographs blocks (not kana or hangul).
fn is_cjk_ideograph(c: char) -> bool {
    matches!(c as u32,
        0x4E00..=0x9FFF
        | 0x3400..=0x4DBF
        | 0x20000..=0x2A6DF
        | 0x2A700..=0x2B73F
        | 0x2B740..=0x2B81F
        | 0x2B820..=0x2CEAF
        | 0xF900..=0xFAFF
        | 0x2F800..=0x2FA1F)
}

/// GPT-2's reversible byte → printable character table: printable Latin-1 bytes map to
/// themselves, the others to U+0100 onwards in byte order.
fn bytes_to_unicode() -> [char; 256] {
    let printable = |b: u32| (0x21..=0x7E).contains(&b) || (0xA1..=0xAC).contains(&b) || (0xAE..=0xFF).contains(&b);
    let mut table = ['\0'; 256];
    let mut next = 256u32;
    for b in 0..256u32 {
        table[b as usize] = if printable(b) {
            char::from_u32(b).expect("a Latin-1 code point")
        } else {
            let c = char::from_u32(next).expect("U+0100..U+0143 are characters");
            next += 1;
            c
        };
    }
    table
}

/// `(content, lstrip, rstrip)` of a token written as a string or as an `AddedToken` object.
fn token_spec(v: &Value) -> std::result::Result<(String, bool, bool), String> {
    match v {
        Value::String(s) => Ok((s.clone(), false, false)),
        Value::Object(o) => {
            let content =
                o.get("content").and_then(Value::as_str).ok_or_else(|| format!("{v} has no \"content\" string"))?;
            let flag = |k: &str| o.get(k).and_then(Value::as_bool).unwrap_or(false);
            // `single_word` would keep the token from matching inside a word; no SD tokenizer
            // sets it, and ignoring it would silently change ids.
            if flag("single_word") {
                return Err(format!("{content:?} is single_word, which this tokenizer does not implement"));
            }
            Ok((content.to_string(), flag("lstrip"), flag("rstrip")))
        }
        other => Err(format!("{other} is not a token (a string or an object with \"content\")")),
    }
}

/// The file as UTF-8 text, refusing one larger than `limit` before reading it.
fn read_limited(path: &Path, limit: u64) -> Result<String> {
    let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let len = file.metadata().map_err(|e| Error::io(path, e))?.len();
    let too_big = |len: u64| Error::Tokenizer {
        path: path.to_path_buf(),
        reason: format!("{len} bytes, more than the {limit} a tokenizer file may have"),
    };
    if len > limit {
        return Err(too_big(len));
    }
    let mut bytes = Vec::with_capacity(len as usize);
    // A file that grows while being read is still cut at the limit.
    file.take(limit + 1).read_to_end(&mut bytes).map_err(|e| Error::io(path, e))?;
    if bytes.len() as u64 > limit {
        return Err(too_big(bytes.len() as u64));
    }
    String::from_utf8(bytes)
        .map_err(|e| Error::Tokenizer { path: path.to_path_buf(), reason: format!("not UTF-8 text ({e})") })
}

fn parse_json_object(path: &Path, what: &'static str) -> Result<serde_json::Map<String, Value>> {
    let text = read_limited(path, MAX_CONFIG_BYTES)?;
    let json_err = |reason: String| Error::Json { path: path.to_path_buf(), what, reason };
    match serde_json::from_str::<Value>(&text).map_err(|e| json_err(e.to_string()))? {
        Value::Object(map) => Ok(map),
        other => Err(json_err(format!("expected an object, found {}", json_kind(&other)))),
    }
}

fn parse_vocab(path: &Path, text: &str) -> Result<HashMap<String, u32>> {
    let json_err = |reason: String| Error::Json { path: path.to_path_buf(), what: "vocabulary", reason };
    let map: serde_json::Map<String, Value> =
        match serde_json::from_str::<Value>(text).map_err(|e| json_err(e.to_string()))? {
            Value::Object(map) => map,
            other => return Err(json_err(format!("expected an object of token → id, found {}", json_kind(&other)))),
        };
    if map.is_empty() {
        return Err(json_err("no tokens".into()));
    }
    let mut encoder = HashMap::with_capacity(map.len());
    for (token, id) in map {
        let id = id
            .as_u64()
            .and_then(|i| u32::try_from(i).ok())
            .ok_or_else(|| json_err(format!("token {token:?} has id {id}, not a whole number ≥ 0")))?;
        encoder.insert(token, id);
    }
    Ok(encoder)
}

fn parse_merges(path: &Path, text: &str) -> Result<HashMap<String, usize>> {
    let mut ranks = HashMap::new();
    for (rank, (line_no, line)) in text.trim().split('\n').enumerate().skip(1).take(MAX_MERGES).enumerate() {
        let parts: Vec<&str> = line.split_whitespace().collect();
        if parts.len() != 2 {
            return Err(Error::Tokenizer {
                path: path.to_path_buf(),
                reason: format!("line {}: {:?} is not a merge of two tokens", line_no + 1, truncate_for_message(line)),
            });
        }
        let key = format!("{} {}", parts[0], parts[1]);
        // A repeated pair keeps its last rank, as Python's dict(zip(merges, range(n))) does.
        ranks.insert(key, rank);
    }
    if ranks.is_empty() {
        return Err(Error::Tokenizer { path: path.to_path_buf(), reason: "no merges after the header line".into() });
    }
    Ok(ranks)
}

fn truncate_for_message(s: &str) -> String {
    let mut out: String = s.chars().take(60).collect();
    if out.len() < s.len() {
        out.push('…');
    }
    out
}

fn json_kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;

    #[test]
    fn byte_table_matches_gpt2() {
        let t = bytes_to_unicode();
        assert_eq!(t[b'!' as usize], '!');
        assert_eq!(t[b' ' as usize], 'Ġ'); // U+0120: space is byte 32, the 33rd non-printable
        assert_eq!(t[0], 'Ā');
        assert_eq!(t[0xAD], 'Ń');
        let unique: HashSet<char> = t.iter().copied().collect();
        assert_eq!(unique.len(), 256);
    }

    #[test]
    fn basic_cleanup_matches_transformers_rules() {
        // Control and format characters vanish, tabs/newlines/NBSP split, CJK stands apart,
        // words are lower-cased, accents kept (composed by NFC).
        assert_eq!(basic_tokenize("A\u{200D}B\tc\u{A0}D\n"), vec!["ab", "c", "d"]);
        assert_eq!(basic_tokenize("猫cat"), vec!["猫", "cat"]);
        assert_eq!(basic_tokenize("Cafe\u{301}"), vec!["café"]);
    }
}
