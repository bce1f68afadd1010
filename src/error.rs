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

/// `text` with the folders of every absolute path in it cut to `...`, keeping the file name:
/// `cannot open /data/DOE^JANE/ct/1.dcm: denied` becomes `cannot open .../1.dcm: denied`. The
/// window shows messages this way while patient details are hidden, because sites name folders
/// after patients and error messages carry the paths the library was given.
///
/// A path starts with `/` (or a drive letter and `:\` / `:/`) at the start of the text or after
/// a space, quote or bracket, and runs to the next `": "`, quote, closing bracket, line break or
/// the end (or the next path), so folder names with spaces are cut whole.
pub fn hide_folders(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = path_start(rest) {
        out.push_str(&rest[..start]);
        let tail = &rest[start..];
        let stop = [": ", "'", "\"", "`", ")", "]", "\n"].iter().filter_map(|stop| tail.find(stop)).min();
        // A second path ends the first (the text between them stays).
        let next = path_start(&tail[1..]).map(|j| j + 1);
        let end = stop.into_iter().chain(next).min().unwrap_or(tail.len());
        let path = tail[..end].trim_end_matches([' ', '\t', '(', '[', '\'', '"', '`', '=']);
        match path.rfind(['/', '\\']) {
            Some(sep) => {
                out.push_str("...");
                out.push_str(&path[sep..]);
            }
            None => out.push_str(path),
        }
        rest = &tail[path.len()..];
    }
    out.push_str(rest);
    out
}

/// Byte offset of the first absolute path in `text`.
fn path_start(text: &str) -> Option<usize> {
    let bytes = text.as_bytes();
    (0..bytes.len()).find(|&i| {
        let boundary = i == 0 || matches!(bytes[i - 1], b' ' | b'\t' | b'\'' | b'"' | b'`' | b'(' | b'[' | b'=');
        let unix = bytes[i] == b'/' && bytes.get(i + 1).is_some_and(|b| !b.is_ascii_whitespace() && *b != b'/');
        let drive = bytes[i].is_ascii_alphabetic()
            && bytes.get(i + 1) == Some(&b':')
            && matches!(bytes.get(i + 2), Some(b'\\' | b'/'));
        boundary && (unix || drive)
    })
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
    fn text_without_absolute_paths_is_unchanged() {
        for text in [
            "29.8 img/s, ratio 1/2, see https://example.org/a/b",
            "expected RST3, found marker 0xFFD9",
            "relative ../shared/data/x.npz stays",
            "a / b and // comment",
            "",
        ] {
            assert_eq!(hide_folders(text), text);
        }
    }
}
