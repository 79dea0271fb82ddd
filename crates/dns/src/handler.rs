//! The hickory request handler: one question in, the answer from the current zone out, never waiting on the catalog.

use std::sync::{Arc, RwLock};

use hickory_server::net::runtime::Time;
use hickory_server::proto::op::{
    Edns, Header, HeaderCounts, MessageType, Metadata, OpCode, ResponseCode,
};
use hickory_server::proto::rr::{DNSClass, Record};
use hickory_server::server::{Request, RequestHandler, ResponseHandler, ResponseInfo};
use hickory_server::zone_handler::MessageResponseBuilder;

use crate::zone::{Outcome, Zone};

/// The zone queries read: swapped whole by the refresher.
#[derive(Debug)]
pub struct Shared {
    zone: RwLock<Arc<Zone>>,
}

impl Shared {
    pub fn new(zone: Zone) -> Shared {
        Shared {
            zone: RwLock::new(Arc::new(zone)),
        }
    }

    /// The current zone (a pointer copy under a read lock).
    pub fn load(&self) -> Arc<Zone> {
        match self.zone.read() {
            Ok(z) => z.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    pub fn store(&self, zone: Zone) {
        let zone = Arc::new(zone);
        match self.zone.write() {
            Ok(mut z) => *z = zone,
            Err(poisoned) => *poisoned.into_inner() = zone,
        }
    }
}

/// Answers from [`Shared`]'s zone.
#[derive(Debug, Clone)]
pub struct Handler {
    pub shared: Arc<Shared>,
}

#[async_trait::async_trait]
impl RequestHandler for Handler {
    async fn handle_request<R: ResponseHandler, T: Time>(
        &self,
        request: &Request,
        mut response: R,
    ) -> ResponseInfo {
        let zone = self.shared.load();
        let mut edns = None;
        let mut code = ResponseCode::NoError;
        if let Some(req) = request.edns.as_ref() {
            let mut e = Edns::new();
            e.set_max_payload(req.max_payload().max(512));
            e.set_version(0);
            edns = Some(e);
            if req.version() > 0 {
                code = ResponseCode::BADVERS;
            }
        }
        let mut builder = MessageResponseBuilder::from_message_request(request);
        if let Some(e) = &edns {
            builder.edns(e);
        }
        let mut meta = Metadata::response_from_request(&request.metadata);
        let none: &[Record] = &[];
        let (mut answers, mut additionals, mut soa) = (none, none, none);
        if code == ResponseCode::NoError {
            code = if request.metadata.message_type != MessageType::Query {
                ResponseCode::FormErr
            } else if request.metadata.op_code != OpCode::Query {
                ResponseCode::NotImp
            } else {
                match request.request_info() {
                    Err(_) => ResponseCode::FormErr,
                    Ok(info) if info.query.query_class() != DNSClass::IN => ResponseCode::Refused,
                    Ok(info) => match zone.lookup(info.query.name(), info.query.query_type()) {
                        Outcome::Refused => ResponseCode::Refused,
                        Outcome::NotLoaded => ResponseCode::ServFail,
                        Outcome::NxDomain => {
                            meta.authoritative = true;
                            soa = std::slice::from_ref(zone.soa());
                            ResponseCode::NXDomain
                        }
                        Outcome::Found {
                            answers: a,
                            additionals: x,
                        } => {
                            meta.authoritative = true;
                            if a.is_empty() {
                                soa = std::slice::from_ref(zone.soa());
                            }
                            (answers, additionals) = (a, x);
                            ResponseCode::NoError
                        }
                    },
                }
            };
        }
        meta.response_code = code;
        let msg = builder.build(meta, answers, none, soa, additionals);
        match response.send_response(msg).await {
            Ok(info) => info,
            Err(e) => {
                tracing::debug!("dns: cannot send a response: {e}");
                meta.response_code = ResponseCode::ServFail;
                ResponseInfo::from(Header {
                    metadata: meta,
                    counts: HeaderCounts::default(),
                })
            }
        }
    }
}
