//! The SCP: listens for associations, answers C-ECHO, keeps every C-STORE in the local study
//! store, and answers C-FIND and C-MOVE from that store (`super::qr_scp`). At most
//! `max_associations` are served at once. Only configured calling AE titles are accepted unless the user allows
//! any; an object that does not parse, or contradicts its command, is refused with a failure
//! status and nothing is stored.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use dicom_core::VR;
use dicom_dictionary_std::tags;
use dicom_ul::association::server::AccessControl;
use dicom_ul::association::{ServerAssociationOptions, SyncAssociation};
use dicom_ul::pdu::{
    AssociationRJ, AssociationRJResult, AssociationRJServiceProviderPresentationReason, AssociationRJServiceUserReason,
    AssociationRJSource, Pdu, PresentationContextResultReason, UserIdentity,
};

use super::dimse::{field, ul_error, Command, Incoming, Link, Message, Status};
use super::error::{Error, Result};
use super::peer::{check_ae_title, Peer};
use super::qr_scp::{handle_find, handle_move, QrOutcome};
use super::sop;
use crate::store::{IncomingDataSet, StoredInstance, StudyStore};

/// Largest data set one C-STORE may carry (held in memory while it is checked and written).
pub const MAX_DATA_SET: usize = 2 << 30;

#[derive(Debug, Clone)]
pub struct ScpConfig {
    /// Our AE title; associations calling another title are refused.
    pub aet: String,
    /// Calling AE titles allowed to connect; `None` accepts any.
    pub allowed_callers: Option<Vec<String>>,
    /// How long a silent peer is waited for.
    pub timeout: Duration,
    pub max_pdu: u32,
    /// Associations served at once; one more is rejected (A-ASSOCIATE-RJ, transient, local
    /// limit exceeded) so that a flood of senders cannot exhaust threads, memory or files.
    pub max_associations: usize,
    /// Where a C-MOVE may send to, by AE title: a request naming any other destination is
    /// answered 0xA801 (move destination unknown).
    pub move_destinations: Vec<Peer>,
}

/// Default of [`ScpConfig::max_associations`].
pub const DEFAULT_MAX_ASSOCIATIONS: usize = 8;

impl ScpConfig {
    pub fn new(aet: &str) -> Self {
        ScpConfig {
            aet: aet.to_string(),
            allowed_callers: Some(Vec::new()),
            timeout: Duration::from_secs(30),
            max_pdu: 262_138,
            max_associations: DEFAULT_MAX_ASSOCIATIONS,
            move_destinations: Vec::new(),
        }
    }
}

/// What the SCP reports while it runs (the CLI prints these; the window lists them).
#[derive(Debug, Clone)]
pub enum ScpEvent {
    Accepted {
        calling_aet: String,
        address: SocketAddr,
    },
    Refused {
        address: SocketAddr,
        reason: String,
    },
    Echo {
        calling_aet: String,
    },
    Stored {
        calling_aet: String,
        instance: StoredInstance,
    },
    StoreFailed {
        calling_aet: String,
        sop_instance_uid: String,
        status: Status,
        reason: String,
    },
    Released {
        calling_aet: String,
    },
    /// A C-FIND or C-MOVE was answered (or refused, with the status sent).
    Query {
        calling_aet: String,
        outcome: QrOutcome,
    },
    /// The association ended abnormally: peer abort, timeout, protocol error.
    Failed {
        calling_aet: String,
        reason: String,
    },
}

pub type EventSink = Arc<dyn Fn(ScpEvent) + Send + Sync>;

/// Accepts an association only when it calls our AE title and comes from an allowed caller.
struct CallerWhitelist {
    allowed: Option<Vec<String>>,
}

impl AccessControl for CallerWhitelist {
    fn check_access(
        &self,
        this_ae_title: &str,
        calling_ae_title: &str,
        called_ae_title: &str,
        _user_identity: Option<&UserIdentity>,
    ) -> std::result::Result<(), AssociationRJServiceUserReason> {
        if called_ae_title.trim() != this_ae_title.trim() {
            return Err(AssociationRJServiceUserReason::CalledAETitleNotRecognized);
        }
        match &self.allowed {
            Some(list) if !list.iter().any(|a| a.trim() == calling_ae_title.trim()) => {
                Err(AssociationRJServiceUserReason::CallingAETitleNotRecognized)
            }
            _ => Ok(()),
        }
    }
}

pub struct StoreScp {
    listener: TcpListener,
    config: Arc<ScpConfig>,
    store: Arc<StudyStore>,
}

impl StoreScp {
    /// Binds `address` (e.g. `0.0.0.0:11112`, or port 0 for any free port).
    pub fn bind(address: &str, config: ScpConfig, store: Arc<StudyStore>) -> Result<StoreScp> {
        check_ae_title(&config.aet)?;
        for caller in config.allowed_callers.iter().flatten() {
            check_ae_title(caller)?;
        }
        for destination in &config.move_destinations {
            check_ae_title(&destination.aet)?;
        }
        let listener =
            TcpListener::bind(address).map_err(|source| Error::Listen { address: address.to_string(), source })?;
        Ok(StoreScp { listener, config: Arc::new(config), store })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.listener.local_addr().expect("a bound listener has an address")
    }

    /// Serves in a background thread until the handle is stopped or dropped.
    pub fn spawn(self, events: EventSink) -> ScpHandle {
        let stop = Arc::new(AtomicBool::new(false));
        let address = self.local_addr();
        let flag = stop.clone();
        let thread = std::thread::Builder::new()
            .name("melo-scp".into())
            .spawn(move || self.serve(events, &flag))
            .expect("spawn the SCP thread");
        ScpHandle { stop, address, thread: Some(thread) }
    }

    /// Serves until `stop` is set (then one more connection wakes the accept loop).
    pub fn serve(self, events: EventSink, stop: &AtomicBool) {
        let active = Arc::new(AtomicUsize::new(0));
        for stream in self.listener.incoming() {
            if stop.load(Ordering::SeqCst) {
                break;
            }
            let Ok(stream) = stream else { continue };
            let (config, store, events) = (self.config.clone(), self.store.clone(), events.clone());
            if active.load(Ordering::SeqCst) >= config.max_associations.max(1) {
                let limit = config.max_associations.max(1);
                let _ = std::thread::Builder::new().name("melo-scp-reject".into()).spawn(move || {
                    let address = stream.peer_addr().unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)));
                    let reason = match reject_local_limit(stream) {
                        Ok(()) => format!("{limit} associations already open (A-ASSOCIATE-RJ: local limit exceeded)"),
                        Err(e) => format!("{limit} associations already open; the rejection did not get through: {e}"),
                    };
                    events(ScpEvent::Refused { address, reason });
                });
                continue;
            }
            let slot = Slot::take(&active);
            // One thread per association: a slow sender does not hold up the others.
            let _ = std::thread::Builder::new().name("melo-scp-assoc".into()).spawn(move || {
                let _slot = slot;
                serve_association(stream, &config, &store, &events)
            });
        }
    }
}

/// One association's place under [`ScpConfig::max_associations`], given back when dropped
/// (whichever way the association ends, a panic included).
struct Slot(Arc<AtomicUsize>);

impl Slot {
    fn take(active: &Arc<AtomicUsize>) -> Slot {
        active.fetch_add(1, Ordering::SeqCst);
        Slot(active.clone())
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Reads the peer's A-ASSOCIATE-RQ and answers A-ASSOCIATE-RJ: transient, service provider
/// (presentation related), local limit exceeded (PS3.8 9.3.4), so the peer knows to try again
/// later instead of seeing a dropped connection.
fn reject_local_limit(mut stream: TcpStream) -> std::io::Result<()> {
    use std::io::{Read, Write};
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    stream.set_write_timeout(Some(Duration::from_secs(5)))?;
    let mut header = [0u8; 6];
    stream.read_exact(&mut header)?;
    let length = u32::from_be_bytes([header[2], header[3], header[4], header[5]]) as u64;
    if header[0] != 0x01 || length > 1 << 20 {
        return Err(std::io::Error::other("not an A-ASSOCIATE-RQ"));
    }
    std::io::copy(&mut (&mut stream).take(length), &mut std::io::sink())?;
    let rj = Pdu::AssociationRJ(AssociationRJ {
        result: AssociationRJResult::Transient,
        source: AssociationRJSource::ServiceProviderPresentation(
            AssociationRJServiceProviderPresentationReason::LocalLimitExceeded,
        ),
    });
    let mut bytes = Vec::new();
    dicom_ul::pdu::write_pdu(&mut bytes, &rj).map_err(std::io::Error::other)?;
    stream.write_all(&bytes)?;
    stream.flush()?;
    // The requester closes the connection on reading the rejection; wait for that briefly so
    // our close does not reset the connection before the PDU is read.
    let _ = stream.shutdown(std::net::Shutdown::Write);
    let _ = std::io::copy(&mut stream.take(64 << 10), &mut std::io::sink());
    Ok(())
}

/// A running SCP; stops (and waits for the accept loop) when dropped.
pub struct ScpHandle {
    stop: Arc<AtomicBool>,
    address: SocketAddr,
    thread: Option<JoinHandle<()>>,
}

impl ScpHandle {
    pub fn local_addr(&self) -> SocketAddr {
        self.address
    }
}

impl Drop for ScpHandle {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the blocking accept; associations in progress finish on their own threads.
        let wake = match self.address {
            SocketAddr::V4(a) if a.ip().is_unspecified() => SocketAddr::from(([127, 0, 0, 1], a.port())),
            other => other,
        };
        let _ = TcpStream::connect_timeout(&wake, Duration::from_secs(2));
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn serve_association(stream: TcpStream, config: &ScpConfig, store: &StudyStore, events: &EventSink) {
    let address = stream.peer_addr().unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)));
    let options = ServerAssociationOptions::new()
        .ae_title(config.aet.clone())
        .ae_access_control(CallerWhitelist { allowed: config.allowed_callers.clone() })
        // Any abstract syntax is accepted so that unsupported requests get a DIMSE status
        // saying so, instead of an opaque refused presentation context.
        .promiscuous(true)
        .with_abstract_syntax(sop::VERIFICATION)
        .max_pdu_length(config.max_pdu)
        .read_timeout(config.timeout)
        .write_timeout(config.timeout);
    let assoc = match options.establish(stream) {
        Ok(a) => a,
        Err(e) => {
            let reason = ul_error(&address.to_string(), "association negotiation", e, config.timeout).to_string();
            events(ScpEvent::Refused { address, reason });
            return;
        }
    };
    let calling_aet = dicom_ul::association::Association::peer_ae_title(&assoc).trim().to_string();
    events(ScpEvent::Accepted { calling_aet: calling_aet.clone(), address });
    let mut link = Link { assoc, peer: calling_aet.clone(), timeout: config.timeout, max_data_set: MAX_DATA_SET };
    loop {
        let incoming = match link.receive("") {
            Ok(i) => i,
            Err(e) => {
                events(ScpEvent::Failed { calling_aet, reason: e.to_string() });
                let _ = SyncAssociation::abort(link.assoc);
                return;
            }
        };
        let outcome = match incoming {
            Incoming::Release => {
                let _ = link.send_pdu(&Pdu::ReleaseRP, "release");
                events(ScpEvent::Released { calling_aet });
                return;
            }
            Incoming::Message(m) => match m.command.field() {
                Some(field::C_ECHO_RQ) => {
                    let rsp = Command::new(field::C_ECHO_RSP)
                        .with_str(tags::AFFECTED_SOP_CLASS_UID, VR::UI, sop::VERIFICATION)
                        .with_u16(tags::MESSAGE_ID_BEING_RESPONDED_TO, m.command.message_id().unwrap_or(0))
                        .with_u16(tags::STATUS, Status::SUCCESS.0);
                    events(ScpEvent::Echo { calling_aet: calling_aet.clone() });
                    link.send(m.context_id, &rsp, None, "C-ECHO response")
                }
                Some(field::C_STORE_RQ) => {
                    let (result, sent) = handle_store(&mut link, &m, store, &calling_aet);
                    match result {
                        Ok(instance) => events(ScpEvent::Stored { calling_aet: calling_aet.clone(), instance }),
                        Err((status, reason)) => events(ScpEvent::StoreFailed {
                            calling_aet: calling_aet.clone(),
                            sop_instance_uid: m.command.str(tags::AFFECTED_SOP_INSTANCE_UID).unwrap_or_default(),
                            status,
                            reason,
                        }),
                    }
                    sent
                }
                Some(field::C_FIND_RQ) => {
                    let (outcome, sent) = handle_find(&mut link, &m, store);
                    events(ScpEvent::Query { calling_aet: calling_aet.clone(), outcome });
                    sent
                }
                Some(field::C_MOVE_RQ) => {
                    let (outcome, sent) =
                        handle_move(&mut link, &m, store, &config.aet, &config.move_destinations, config.timeout);
                    events(ScpEvent::Query { calling_aet: calling_aet.clone(), outcome });
                    sent
                }
                Some(field::C_CANCEL_RQ) => Ok(()), // answers are sent in one go: nothing left to cancel
                Some(other) if other & 0x8000 == 0 => {
                    let rsp = Command::new(other | 0x8000)
                        .with_u16(tags::MESSAGE_ID_BEING_RESPONDED_TO, m.command.message_id().unwrap_or(0))
                        .with_u16(tags::STATUS, Status::UNRECOGNIZED_OPERATION.0);
                    link.send(m.context_id, &rsp, None, "response")
                }
                _ => Err(link.protocol("a response where a request was expected".into())),
            },
        };
        if let Err(e) = outcome {
            events(ScpEvent::Failed { calling_aet, reason: e.to_string() });
            let _ = SyncAssociation::abort(link.assoc);
            return;
        }
    }
}

/// Stores the data set of a C-STORE request (on our SCP, or a C-GET sub-operation on our SCU
/// association) and answers it. Returns what was stored or the failure status and reason,
/// and whether the response went out.
pub(crate) fn handle_store<A: SyncAssociation<TcpStream>>(
    link: &mut Link<A>,
    message: &Message,
    store: &StudyStore,
    calling_aet: &str,
) -> (std::result::Result<StoredInstance, (Status, String)>, Result<()>) {
    let command = &message.command;
    let sop_class = command.str(tags::AFFECTED_SOP_CLASS_UID).unwrap_or_default();
    let sop_instance = command.str(tags::AFFECTED_SOP_INSTANCE_UID).unwrap_or_default();
    let accepted = context_accepted(link, message.context_id);
    let result = if !accepted {
        Err((Status::CANNOT_UNDERSTAND, "C-STORE on a presentation context that was not accepted".to_string()))
    } else if !sop::is_storage_class(&sop_class) {
        Err((Status::SOP_CLASS_NOT_SUPPORTED, format!("{sop_class} is not a storage SOP class")))
    } else if link.abstract_syntax(message.context_id).is_some_and(|a| a != sop_class) {
        Err((Status::DATA_SET_MISMATCH, "SOP class differs from the presentation context's".to_string()))
    } else {
        match (&message.data, link.transfer_syntax(message.context_id)) {
            (Some(data), Some(ts)) => store
                .store_data_set(&IncomingDataSet {
                    sop_class_uid: &sop_class,
                    sop_instance_uid: &sop_instance,
                    transfer_syntax: &ts,
                    data_set: data,
                    source_aet: calling_aet,
                })
                .map_err(|e| {
                    let status = match e {
                        crate::store::Error::Unreadable(_) => Status::CANNOT_UNDERSTAND,
                        crate::store::Error::Mismatch(_) => Status::DATA_SET_MISMATCH,
                        crate::store::Error::Io(_) | crate::store::Error::Database { .. } => Status::OUT_OF_RESOURCES,
                    };
                    (status, e.to_string())
                }),
            _ => Err((Status::CANNOT_UNDERSTAND, "C-STORE without a data set".to_string())),
        }
    };
    let status = match &result {
        Ok(_) => Status::SUCCESS,
        Err((s, _)) => *s,
    };
    let mut rsp = Command::new(field::C_STORE_RSP)
        .with_str(tags::AFFECTED_SOP_CLASS_UID, VR::UI, &sop_class)
        .with_str(tags::AFFECTED_SOP_INSTANCE_UID, VR::UI, &sop_instance)
        .with_u16(tags::MESSAGE_ID_BEING_RESPONDED_TO, command.message_id().unwrap_or(0))
        .with_u16(tags::STATUS, status.0);
    if let Err((_, reason)) = &result {
        // Error Comment is LO: at most 64 characters.
        let comment: String = reason.chars().filter(|c| *c != '\\').take(64).collect();
        rsp = rsp.with_str(tags::ERROR_COMMENT, VR::LO, &comment);
    }
    let sent = link.send(message.context_id, &rsp, None, "C-STORE response");
    (result, sent)
}

/// Whether a presentation context was accepted (the server side lists refused ones too).
fn context_accepted<A: SyncAssociation<TcpStream>>(link: &Link<A>, context_id: u8) -> bool {
    dicom_ul::association::Association::presentation_contexts(&link.assoc)
        .iter()
        .any(|pc| pc.id == context_id && pc.reason == PresentationContextResultReason::Acceptance)
}
