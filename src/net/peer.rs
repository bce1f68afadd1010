//! DICOM nodes as users write them: `AET@HOST:PORT`.

use std::fmt;
use std::str::FromStr;

use super::error::{Error, Result};

/// A remote application entity: its AE title and where it listens.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Peer {
    pub aet: String,
    pub host: String,
    pub port: u16,
}

impl Peer {
    pub fn new(aet: &str, host: &str, port: u16) -> Result<Self> {
        check_ae_title(aet)?;
        if host.is_empty() {
            return Err(Error::Invalid("empty host name".into()));
        }
        if port == 0 {
            return Err(Error::Invalid("port 0 is not a listening port".into()));
        }
        Ok(Peer { aet: aet.to_string(), host: host.to_string(), port })
    }

    /// `HOST:PORT` for the socket layer (IPv6 literals in brackets).
    pub fn socket_address(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

impl fmt::Display for Peer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}", self.aet, self.socket_address())
    }
}

impl FromStr for Peer {
    type Err = Error;

    /// `AET@HOST:PORT`; an IPv6 host goes in brackets (`PACS@[::1]:104`).
    fn from_str(s: &str) -> Result<Self> {
        let bad =
            |why: &str| Error::Invalid(format!("peer {s:?}: {why}; expected AET@HOST:PORT (e.g. PACS@10.0.0.5:104)"));
        let (aet, address) = s.rsplit_once('@').ok_or_else(|| bad("no '@' between AE title and host"))?;
        let (host, port) = address.rsplit_once(':').ok_or_else(|| bad("no ':' before the port"))?;
        let host = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')).unwrap_or(host);
        let port: u16 = port.parse().map_err(|_| bad("the port is not a number from 1 to 65535"))?;
        Peer::new(aet, host, port).map_err(|e| bad(&e.to_string()))
    }
}

/// An AE title: 1 to 16 characters of printable ASCII, no backslash, not only spaces
/// (PS3.5 AE value representation). Checked before connecting, so a typo is reported as such
/// rather than as a refusal by the peer.
pub fn check_ae_title(aet: &str) -> Result<()> {
    let why = if aet.trim().is_empty() {
        Some("is empty")
    } else if aet.len() > 16 {
        Some("is longer than 16 characters")
    } else if !aet.bytes().all(|b| (0x20..0x7f).contains(&b) && b != b'\\') {
        Some("may only hold printable ASCII characters other than '\\'")
    } else {
        None
    };
    match why {
        Some(why) => Err(Error::Invalid(format!("AE title {aet:?} {why}"))),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_rejects_peers() {
        let p: Peer = "ORTHANC@127.0.0.1:4242".parse().unwrap();
        assert_eq!((p.aet.as_str(), p.host.as_str(), p.port), ("ORTHANC", "127.0.0.1", 4242));
        assert_eq!(p.to_string(), "ORTHANC@127.0.0.1:4242");
        let v6: Peer = "PACS@[::1]:104".parse().unwrap();
        assert_eq!(v6.host, "::1");
        assert_eq!(v6.socket_address(), "[::1]:104");
        for bad in [
            "127.0.0.1:104",
            "PACS@host",
            "PACS@host:0",
            "PACS@host:x",
            "@host:104",
            "A_VERY_LONG_AE_TITLE@h:1",
            "A\\B@h:1",
        ] {
            let err = bad.parse::<Peer>().unwrap_err().to_string();
            assert!(err.contains("expected AET@HOST:PORT"), "{bad}: {err}");
        }
    }
}
