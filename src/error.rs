//! One error type for the library, so the CLI and the GUI can show a one-line reason.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Io(#[from] IoError),
    #[error("not a DICOM file: {0}")]
    NotDicom(String),
    #[error("cannot read DICOM data: {0}")]
    Parse(String),
    #[error("no pixel data in this DICOM object")]
    NoPixelData,
    #[error("missing or invalid attribute {0}")]
    MissingAttribute(&'static str),
    #[error("unsupported: {0}")]
    Unsupported(String),
    #[error("cannot decode pixel data: {0}")]
    Decode(String),
    #[error("image too large: {0}")]
    TooLarge(String),
    #[error("{0}")]
    Invalid(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A file operation that failed, with the path it was on. Every module's error type carries
/// this one struct, so an I/O failure keeps its path and source through every conversion.
#[derive(Debug, thiserror::Error)]
#[error("{path}: {source}")]
pub struct IoError {
    pub path: PathBuf,
    #[source]
    pub source: std::io::Error,
}

impl Error {
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io(IoError { path: path.into(), source })
    }
}

/// `text` with the folders of every path in it cut to `...`, keeping the file name:
/// `cannot open /data/DOE^JANE/ct/1.dcm: denied` becomes `cannot open .../1.dcm: denied`. The
/// window shows messages this way while patient details are hidden, because sites name folders
/// after patients and error messages carry the paths the library was given.
///
/// A path starts at the start of the text or after a space, quote, bracket or `=`, with `/`
/// (Unix), a drive letter and `:\` / `:/` (Windows), or `\\` / `//` and a name (UNC,
/// `\\server\share\…`); it runs to the next `": "`, quote, closing bracket, line break or the
/// end (or the next such path), so folder names with spaces are cut whole.
///
/// A relative path starts with a word holding `/` or `\`; it also ends at `", "` and `"; "`,
/// and counts as a path when it starts with `./`, `../` or `~/`, holds a `\`, holds two or
/// more `/` (`data/DOE JANE/ct`), or one `/` before a file name with an extension
/// (`DOE^JANE/1.dcm`). URLs (`://`) and ratios such as `img/s` or `1/2` are not paths.
pub fn hide_folders(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some((start, end)) = next_path(rest) {
        out.push_str(&rest[..start]);
        let path = &rest[start..end];
        match path.rfind(['/', '\\']) {
            Some(sep) => {
                out.push_str("...");
                out.push_str(&path[sep..]);
            }
            None => out.push_str(path),
        }
        rest = &rest[end..];
    }
    out.push_str(rest);
    out
}

/// Byte range of the first path in `text`.
fn next_path(text: &str) -> Option<(usize, usize)> {
    let bytes = text.as_bytes();
    (0..bytes.len()).filter(|&i| text.is_char_boundary(i) && at_boundary(bytes, i)).find_map(|i| {
        let tail = &text[i..];
        let absolute = absolute_start(bytes, i);
        if !absolute && !tail.split(char::is_whitespace).next().is_some_and(|w| w.contains(['/', '\\'])) {
            return None;
        }
        let mut stops = vec![": ", "'", "\"", "`", ")", "]", "\n"];
        if !absolute {
            stops.extend([", ", "; "]);
        }
        let stop = stops.iter().filter_map(|stop| tail.find(stop)).min();
        // A second absolute path ends the first (the text between them stays).
        let next = (1..tail.len()).find(|&k| {
            tail.is_char_boundary(k) && at_boundary(tail.as_bytes(), k) && absolute_start(tail.as_bytes(), k)
        });
        let end = stop.into_iter().chain(next).min().unwrap_or(tail.len());
        let path = tail[..end].trim_end_matches([' ', '\t', '(', '[', '\'', '"', '`', '=', ',', ';', '.', ':']);
        (absolute || is_relative_path(path)).then_some((i, i + path.len())).filter(|(a, b)| b > a)
    })
}

/// Whether a path may start at byte `i`: the start of the text or after a space, quote,
/// bracket or `=`.
fn at_boundary(bytes: &[u8], i: usize) -> bool {
    i == 0 || matches!(bytes[i - 1], b' ' | b'\t' | b'\'' | b'"' | b'`' | b'(' | b'[' | b'=')
}

/// Whether an absolute path (Unix, UNC or drive letter) starts at byte `i`.
fn absolute_start(bytes: &[u8], i: usize) -> bool {
    let name_at = |k: usize| bytes.get(k).is_some_and(|b| !b.is_ascii_whitespace() && *b != b'/' && *b != b'\\');
    // `/x`, `//server`, `\\server` — not `/ `, `// comment`.
    let unix = bytes[i] == b'/' && (name_at(i + 1) || bytes.get(i + 1) == Some(&b'/') && name_at(i + 2));
    let unc = bytes[i] == b'\\' && bytes.get(i + 1) == Some(&b'\\') && name_at(i + 2);
    let drive = bytes[i].is_ascii_alphabetic()
        && bytes.get(i + 1) == Some(&b':')
        && matches!(bytes.get(i + 2), Some(b'\\' | b'/'));
    unix || unc || drive
}

/// Whether `path` (not absolute) is a relative path rather than a ratio, a unit or a URL.
fn is_relative_path(path: &str) -> bool {
    if path.is_empty() || path.starts_with(['/', '\\']) || path.contains("://") {
        return false;
    }
    if ["./", "../", "~/", ".\\", "..\\"].iter().any(|p| path.starts_with(p)) || path.contains('\\') {
        return true;
    }
    let file_name = path.rsplit('/').next().unwrap_or("");
    let has_extension = file_name.rsplit_once('.').is_some_and(|(stem, ext)| {
        !stem.is_empty()
            && (1..=5).contains(&ext.len())
            && ext.bytes().all(|b| b.is_ascii_alphanumeric())
            && ext.bytes().any(|b| b.is_ascii_alphabetic())
    });
    match path.matches('/').count() {
        0 => false,
        1 => has_extension,
        _ => true,
    }
}

#[cfg(test)]
mod tests {
    use super::hide_folders;

    #[test]
    fn folders_are_cut_and_file_names_kept() {
        assert_eq!(
            hide_folders("cannot open /data/DOE^JANE 1970/ct/1.dcm: Permission denied (os error 13)"),
            "cannot open .../1.dcm: Permission denied (os error 13)"
        );
        assert_eq!(
            hide_folders("/home/u/DOE^JANE/x.safetensors: not a safetensors file"),
            ".../x.safetensors: not a safetensors file"
        );
        assert_eq!(
            hide_folders(r"adapter 'C:\Scans\DOE^JANE\a.safetensors' refused"),
            r"adapter '...\a.safetensors' refused"
        );
        assert_eq!(hide_folders("two: /a/SMITH/1.dcm and (/b/JONES/2.dcm)"), "two: .../1.dcm and (.../2.dcm)");
    }

    #[test]
    fn relative_and_unc_paths_are_cut_too() {
        for (text, want) in [
            ("cannot open DOE^JANE/1.dcm: denied", "cannot open .../1.dcm: denied"),
            ("cannot open data/DOE JANE/ct/1.dcm: denied", "cannot open .../1.dcm: denied"),
            ("relative ../shared/DOE^JANE/x.npz", "relative .../x.npz"),
            ("see ./scans/DOE^JANE/1.dcm for details", "see .../1.dcm for details"),
            (r"open \\pacs\scans\DOE^JANE\1.dcm: denied", r"open ...\1.dcm: denied"),
            ("open //pacs/scans/DOE^JANE/1.dcm", "open .../1.dcm"),
            (r"file Scans\DOE^JANE\1.dcm refused", r"file ...\1.dcm refused"),
        ] {
            assert_eq!(hide_folders(text), want, "{text}");
        }
    }

    #[test]
    fn text_without_absolute_paths_is_unchanged() {
        for text in [
            "29.8 img/s, ratio 1/2, see https://example.org/a/b",
            "expected RST3, found marker 0xFFD9",
            "a / b and // comment",
            "",
        ] {
            assert_eq!(hide_folders(text), text);
        }
    }
}
