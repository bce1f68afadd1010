//! The DIMSE message layer over dicom-ul's associations (PS3.7): command sets encoded in
//! Implicit VR Little Endian with their group length, and whole messages (command, then the
//! optional data set) cut into P-DATA fragments no larger than the peer accepts, or put
//! together again from them.
//!
//! dicom-ul stops at PDUs; everything from command fields to the order of fragments is here.

use std::fmt;
use std::net::TcpStream;
use std::time::Duration;

use dicom_core::{DataElement, PrimitiveValue, Tag, VR};
use dicom_dictionary_std::tags;
use dicom_object::InMemDicomObject;
use dicom_transfer_syntax_registry::entries::IMPLICIT_VR_LITTLE_ENDIAN;
use dicom_ul::association::{Association, SyncAssociation};
use dicom_ul::pdu::{PDataValue, PDataValueType, Pdu};

use super::error::{Error, Result};

/// Command Field values (PS3.7 E.1).
pub mod field {
    pub const C_STORE_RQ: u16 = 0x0001;
    pub const C_STORE_RSP: u16 = 0x8001;
    pub const C_GET_RQ: u16 = 0x0010;
    pub const C_GET_RSP: u16 = 0x8010;
    pub const C_FIND_RQ: u16 = 0x0020;
    pub const C_FIND_RSP: u16 = 0x8020;
    pub const C_MOVE_RQ: u16 = 0x0021;
    pub const C_MOVE_RSP: u16 = 0x8021;
    pub const C_ECHO_RQ: u16 = 0x0030;
    pub const C_ECHO_RSP: u16 = 0x8030;
    pub const C_CANCEL_RQ: u16 = 0x0FFF;
}

/// Command Data Set Type value meaning "no data set follows".
const NO_DATA_SET: u16 = 0x0101;
/// Any other value means a data set follows; 0x0000 is what most implementations send.
const DATA_SET_PRESENT: u16 = 0x0000;

/// A DIMSE status (PS3.7 C): success, pending, cancel, warning or failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Status(pub u16);

impl Status {
    pub const SUCCESS: Status = Status(0x0000);
    pub const PENDING: Status = Status(0xFF00);
    pub const CANCEL: Status = Status(0xFE00);
    /// Refused: out of resources (C-STORE: the store could not keep the object).
    pub const OUT_OF_RESOURCES: Status = Status(0xA700);
    /// Error: data set does not match SOP class (or its UIDs contradict the command).
    pub const DATA_SET_MISMATCH: Status = Status(0xA900);
    /// Error: cannot understand (the data set does not parse).
    pub const CANNOT_UNDERSTAND: Status = Status(0xC000);
    pub const SOP_CLASS_NOT_SUPPORTED: Status = Status(0x0122);
    pub const UNRECOGNIZED_OPERATION: Status = Status(0x0211);
    /// Sub-operations complete, one or more failures or warnings (C-GET, C-MOVE).
    pub const SUB_OPERATIONS_WARNING: Status = Status(0xB000);

    pub fn is_pending(self) -> bool {
        self.0 == 0xFF00 || self.0 == 0xFF01
    }
    pub fn is_success(self) -> bool {
        self.0 == 0x0000
    }
    pub fn is_cancel(self) -> bool {
        self.0 == 0xFE00
    }
    pub fn is_warning(self) -> bool {
        self.0 == 0x0001 || (self.0 & 0xF000) == 0xB000
    }
    pub fn is_failure(self) -> bool {
        !(self.is_pending() || self.is_success() || self.is_cancel() || self.is_warning())
    }

    fn meaning(self) -> &'static str {
        match self.0 {
            0x0000 => "success",
            0xFF00 | 0xFF01 => "pending",
            0xFE00 => "cancelled",
            0x0001 | 0xB000..=0xBFFF => "warning",
            0x0105 => "no such attribute",
            0x0106 => "invalid attribute value",
            0x0110 => "processing failure",
            0x0117 => "invalid object instance",
            0x0118 => "no such SOP class",
            0x0122 => "SOP class not supported",
            0x0124 => "not authorized",
            0x0210 => "duplicate invocation",
            0x0211 => "unrecognized operation",
            0x0212 => "mistyped argument",
            0x0213 => "resource limitation",
            0xA700..=0xA7FF => "refused: out of resources",
            0xA801 => "refused: move destination unknown",
            0xA900..=0xA9FF => "data set does not match SOP class",
            0xC000..=0xCFFF => "cannot understand / unable to process",
            _ => "failure",
        }
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "status 0x{:04X} ({})", self.0, self.meaning())
    }
}

/// A DIMSE command set (group 0000).
#[derive(Debug, Clone)]
pub struct Command(InMemDicomObject);

impl Command {
    pub fn new(command_field: u16) -> Self {
        let mut obj = InMemDicomObject::new_empty();
        obj.put(DataElement::new(tags::COMMAND_FIELD, VR::US, PrimitiveValue::from(command_field)));
        Command(obj).with_u16(tags::COMMAND_DATA_SET_TYPE, NO_DATA_SET)
    }

    pub fn with_u16(mut self, tag: Tag, value: u16) -> Self {
        self.0.put(DataElement::new(tag, VR::US, PrimitiveValue::from(value)));
        self
    }

    /// A string element; UIDs and AE titles are padded to even length by the encoder.
    pub fn with_str(mut self, tag: Tag, vr: VR, value: &str) -> Self {
        self.0.put(DataElement::new(tag, vr, PrimitiveValue::from(value)));
        self
    }

    /// Marks that a data set follows the command.
    pub fn with_data_set(self) -> Self {
        self.with_u16(tags::COMMAND_DATA_SET_TYPE, DATA_SET_PRESENT)
    }

    pub fn u16(&self, tag: Tag) -> Option<u16> {
        self.0.element_opt(tag).ok().flatten().and_then(|e| e.to_int::<u16>().ok())
    }

    pub fn str(&self, tag: Tag) -> Option<String> {
        let e = self.0.element_opt(tag).ok().flatten()?;
        let s = e.to_str().ok()?;
        Some(s.trim_end_matches(['\0', ' ']).to_string())
    }

    pub fn field(&self) -> Option<u16> {
        self.u16(tags::COMMAND_FIELD)
    }
    pub fn has_data_set(&self) -> bool {
        self.u16(tags::COMMAND_DATA_SET_TYPE).is_some_and(|t| t != NO_DATA_SET)
    }
    pub fn status(&self) -> Option<Status> {
        self.u16(tags::STATUS).map(Status)
    }
    pub fn message_id(&self) -> Option<u16> {
        self.u16(tags::MESSAGE_ID)
    }
    pub fn responded_message_id(&self) -> Option<u16> {
        self.u16(tags::MESSAGE_ID_BEING_RESPONDED_TO)
    }
    pub fn error_comment(&self) -> Option<String> {
        self.str(tags::ERROR_COMMENT).filter(|s| !s.is_empty())
    }

    /// Sub-operation counters of a C-GET / C-MOVE response.
    pub fn sub_operations(&self) -> SubOperations {
        SubOperations {
            remaining: self.u16(tags::NUMBER_OF_REMAINING_SUBOPERATIONS),
            completed: self.u16(tags::NUMBER_OF_COMPLETED_SUBOPERATIONS).unwrap_or(0),
            failed: self.u16(tags::NUMBER_OF_FAILED_SUBOPERATIONS).unwrap_or(0),
            warning: self.u16(tags::NUMBER_OF_WARNING_SUBOPERATIONS).unwrap_or(0),
        }
    }

    /// Implicit VR Little Endian bytes, Command Group Length first (PS3.7 6.3.1).
    pub fn encode(&self) -> Result<Vec<u8>> {
        let ts = IMPLICIT_VR_LITTLE_ENDIAN.erased();
        let mut body = self.0.clone();
        body.remove_element(tags::COMMAND_GROUP_LENGTH);
        let mut bytes = Vec::new();
        body.write_dataset_with_ts(&mut bytes, &ts)
            .map_err(|e| Error::Invalid(format!("cannot encode a DIMSE command: {e}")))?;
        let length = u32::try_from(bytes.len()).map_err(|_| Error::Invalid("DIMSE command too large".into()))?;
        // Group length element: tag (0000,0000), 4-byte length 4, UL value.
        let mut out = Vec::with_capacity(12 + bytes.len());
        out.extend_from_slice(&[0, 0, 0, 0, 4, 0, 0, 0]);
        out.extend_from_slice(&length.to_le_bytes());
        out.extend_from_slice(&bytes);
        Ok(out)
    }

    pub fn decode(bytes: &[u8]) -> std::result::Result<Command, String> {
        let ts = IMPLICIT_VR_LITTLE_ENDIAN.erased();
        let obj =
            InMemDicomObject::read_dataset_with_ts(bytes, &ts).map_err(|e| format!("malformed command set: {e}"))?;
        let command = Command(obj);
        if command.field().is_none() {
            return Err("command set without a Command Field".into());
        }
        Ok(command)
    }
}

/// Sub-operation counters of C-GET and C-MOVE responses.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct SubOperations {
    pub remaining: Option<u16>,
    pub completed: u16,
    pub failed: u16,
    pub warning: u16,
}

/// One DIMSE message as received.
#[derive(Debug)]
pub struct Message {
    pub context_id: u8,
    pub command: Command,
    /// The data set, encoded in the transfer syntax of `context_id`.
    pub data: Option<Vec<u8>>,
}

/// What came in on an association.
#[derive(Debug)]
pub enum Incoming {
    Message(Message),
    /// The peer asked to release the association.
    Release,
}

/// One side of an established association, with the context for error messages.
pub struct Link<A> {
    pub assoc: A,
    /// How the peer is named in messages (`AET@HOST:PORT` or the calling AE title).
    pub peer: String,
    pub timeout: Duration,
    /// Refuse data sets larger than this (a peer cannot make us exhaust memory).
    pub max_data_set: usize,
}

/// Largest fragment we send even when the peer accepts more: bigger PDUs gain nothing and
/// cost one copy each.
const SEND_FRAGMENT_CAP: usize = 1 << 20;
/// PDV item header within a P-DATA-TF: item length (4), context ID (1), control header (1).
const PDV_HEADER: usize = 6;

impl<A: SyncAssociation<TcpStream>> Link<A> {
    /// Sends a command and, when given, its data set (already encoded in the context's
    /// transfer syntax), fragmented to the peer's maximum PDU length.
    pub fn send(&mut self, context_id: u8, command: &Command, data: Option<&[u8]>, during: &str) -> Result<()> {
        let command = match data {
            Some(_) => command.clone().with_data_set(),
            None => command.clone(),
        };
        let command_bytes = command.encode()?;
        self.send_fragments(context_id, PDataValueType::Command, &command_bytes, during)?;
        if let Some(data) = data {
            self.send_fragments(context_id, PDataValueType::Data, data, during)?;
        }
        Ok(())
    }

    fn send_fragments(&mut self, context_id: u8, kind: PDataValueType, bytes: &[u8], during: &str) -> Result<()> {
        let peer_max = match Association::peer_max_pdu_length(&self.assoc) {
            0 => usize::MAX, // 0: the peer sets no limit
            n => n as usize,
        };
        if peer_max <= PDV_HEADER {
            return Err(self.protocol(format!("the peer's maximum PDU length ({peer_max}) is too small")));
        }
        let chunk = peer_max.min(SEND_FRAGMENT_CAP) - PDV_HEADER;
        let mut pieces = bytes.chunks(chunk).peekable();
        if bytes.is_empty() {
            // An empty data set is still one (last) fragment.
            return self.send_pdu(
                &Pdu::PData {
                    data: vec![PDataValue {
                        presentation_context_id: context_id,
                        value_type: kind,
                        is_last: true,
                        data: vec![],
                    }],
                },
                during,
            );
        }
        while let Some(piece) = pieces.next() {
            let is_last = pieces.peek().is_none();
            let pdu = Pdu::PData {
                data: vec![PDataValue {
                    presentation_context_id: context_id,
                    value_type: kind.clone(),
                    is_last,
                    data: piece.to_vec(),
                }],
            };
            self.send_pdu(&pdu, during)?;
        }
        Ok(())
    }

    pub fn send_pdu(&mut self, pdu: &Pdu, during: &str) -> Result<()> {
        SyncAssociation::send(&mut self.assoc, pdu).map_err(|e| ul_error(&self.peer, during, e, self.timeout))
    }

    /// Receives the next message, or the peer's release request. A peer abort, a closed
    /// connection or a timeout is an error naming what was going on.
    pub fn receive(&mut self, during: &str) -> Result<Incoming> {
        let mut context_id = None;
        let mut command_bytes = Vec::new();
        let mut command: Option<Command> = None;
        let mut data = Vec::new();
        loop {
            let pdu =
                SyncAssociation::receive(&mut self.assoc).map_err(|e| ul_error(&self.peer, during, e, self.timeout))?;
            let values = match pdu {
                Pdu::PData { data } => data,
                Pdu::ReleaseRQ if command.is_none() && command_bytes.is_empty() => return Ok(Incoming::Release),
                Pdu::AbortRQ { .. } => {
                    return Err(Error::Aborted { peer: self.peer.clone(), during: during_text(during) });
                }
                other => {
                    return Err(self.protocol(format!(
                        "unexpected {} {}",
                        other.short_description(),
                        during_text(during)
                    )))
                }
            };
            for value in values {
                let id = *context_id.get_or_insert(value.presentation_context_id);
                if value.presentation_context_id != id {
                    return Err(self.protocol("fragments of one message on different presentation contexts".into()));
                }
                match (value.value_type, &command) {
                    (PDataValueType::Command, None) => {
                        command_bytes.extend_from_slice(&value.data);
                        if command_bytes.len() > 1 << 20 {
                            return Err(self.protocol("command set larger than 1 MiB".into()));
                        }
                        if value.is_last {
                            let c = Command::decode(&command_bytes).map_err(|e| self.protocol(e))?;
                            if !c.has_data_set() {
                                return Ok(Incoming::Message(Message { context_id: id, command: c, data: None }));
                            }
                            command = Some(c);
                        }
                    }
                    (PDataValueType::Command, Some(_)) => {
                        return Err(self.protocol("a command fragment where the data set was expected".into()))
                    }
                    (PDataValueType::Data, None) => {
                        return Err(self.protocol("a data set fragment before its command".into()))
                    }
                    (PDataValueType::Data, Some(_)) => {
                        if data.len() + value.data.len() > self.max_data_set {
                            return Err(self
                                .protocol(format!("data set larger than the {} MiB limit", self.max_data_set >> 20)));
                        }
                        data.extend_from_slice(&value.data);
                        if value.is_last {
                            let command = command.take().expect("matched Some above");
                            return Ok(Incoming::Message(Message { context_id: id, command, data: Some(data) }));
                        }
                    }
                }
            }
        }
    }

    /// Receives the next message; a release request here is a protocol error (the peer left
    /// in the middle of an operation).
    pub fn receive_message(&mut self, during: &str) -> Result<Message> {
        match self.receive(during)? {
            Incoming::Message(m) => Ok(m),
            Incoming::Release => {
                Err(self.protocol(format!("the peer released the association {}", during_text(during))))
            }
        }
    }

    /// The transfer syntax negotiated for a presentation context.
    pub fn transfer_syntax(&self, context_id: u8) -> Option<String> {
        Association::presentation_contexts(&self.assoc)
            .iter()
            .find(|pc| pc.id == context_id)
            .map(|pc| pc.transfer_syntax.trim_end_matches(['\0', ' ']).to_string())
    }

    pub fn abstract_syntax(&self, context_id: u8) -> Option<String> {
        Association::presentation_contexts(&self.assoc)
            .iter()
            .find(|pc| pc.id == context_id)
            .map(|pc| pc.abstract_syntax.trim_end_matches(['\0', ' ']).to_string())
    }

    pub fn protocol(&self, reason: String) -> Error {
        Error::Protocol { peer: self.peer.clone(), reason }
    }
}

fn during_text(during: &str) -> String {
    if during.is_empty() {
        String::new()
    } else {
        format!(" during {during}")
    }
}

/// Turns a dicom-ul error into one sentence: refusals with their reason, aborts, timeouts,
/// closed connections.
pub(crate) fn ul_error(peer: &str, during: &str, e: dicom_ul::association::Error, timeout: Duration) -> Error {
    use dicom_ul::association::Error as Ul;
    let peer = peer.to_string();
    let during_s = during_text(during);
    match e {
        Ul::Rejected { association_rj, .. } => {
            let permanence = match association_rj.result {
                dicom_ul::pdu::AssociationRJResult::Permanent => "permanent",
                dicom_ul::pdu::AssociationRJResult::Transient => "transient, try again later",
            };
            Error::Rejected { peer, reason: format!("{} ({permanence})", association_rj.source) }
        }
        Ul::Aborted { .. } => Error::Aborted { peer, during: during_s },
        Ul::NoAcceptedPresentationContexts { .. } => Error::NoPresentationContext { peer, what: during.to_string() },
        Ul::ConnectionClosed { .. } => {
            Error::Connection { peer, during: during_s, reason: "the peer closed the connection".into() }
        }
        other => {
            let (io_kind, text) = error_chain(&other);
            match io_kind {
                Some(std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {
                    Error::Timeout { peer, seconds: timeout.as_secs(), during: during_s }
                }
                Some(_) if matches!(other, Ul::Connect { .. } | Ul::ToAddress { .. }) => {
                    Error::Connect { peer, reason: text }
                }
                _ => Error::Connection { peer, during: during_s, reason: text },
            }
        }
    }
}

/// The innermost I/O error kind and the chain's messages joined (snafu's variant names alone
/// say little).
fn error_chain(e: &(dyn std::error::Error + 'static)) -> (Option<std::io::ErrorKind>, String) {
    let mut kind = None;
    let mut parts = Vec::new();
    let mut current: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = current {
        if let Some(io) = err.downcast_ref::<std::io::Error>() {
            kind = Some(io.kind());
        }
        let text = err.to_string();
        if !parts.contains(&text) {
            parts.push(text);
        }
        current = err.source();
    }
    (kind, parts.last().cloned().unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_round_trip_with_group_length() {
        let c = Command::new(field::C_ECHO_RQ).with_u16(tags::MESSAGE_ID, 7).with_str(
            tags::AFFECTED_SOP_CLASS_UID,
            VR::UI,
            "1.2.840.10008.1.1",
        );
        let bytes = c.encode().unwrap();
        // (0000,0000) UL, then the rest; the group length counts the bytes after it.
        assert_eq!(&bytes[..8], &[0, 0, 0, 0, 4, 0, 0, 0]);
        let length = u32::from_le_bytes(bytes[8..12].try_into().unwrap()) as usize;
        assert_eq!(length, bytes.len() - 12);
        // The UID (17 characters) is padded to even length.
        assert_eq!(bytes.len() % 2, 0);
        let back = Command::decode(&bytes).unwrap();
        assert_eq!(back.field(), Some(field::C_ECHO_RQ));
        assert_eq!(back.message_id(), Some(7));
        assert_eq!(back.str(tags::AFFECTED_SOP_CLASS_UID).as_deref(), Some("1.2.840.10008.1.1"));
        assert!(!back.has_data_set());
        assert!(Command::new(field::C_FIND_RQ).with_data_set().has_data_set());
        assert!(Command::decode(b"garbage").is_err());
    }

    #[test]
    fn status_classes() {
        assert!(Status(0xFF01).is_pending() && !Status(0xFF01).is_failure());
        assert!(Status(0xB000).is_warning());
        assert!(Status(0xA700).is_failure());
        assert!(Status(0xC000).to_string().contains("0xC000"));
    }
}
