//! Infobip SMS: `POST /sms/3/messages` (`messages[].destinations[].to`, `sender`,
//! `content.text`), `POST /sms/3/messages/outbound` and the older
//! `POST /sms/2/text/advanced` (`messages[].destinations[].to`, `from`, `text`), and the
//! older `single`, `multi` and `text/query` sends.
//!
//! Errors: v2 answers `{requestError: {serviceException: {messageId, text}}}`, v3
//! `{errorCode, description, action}`; the Python SDK raises `ApiException` with the status
//! and does not retry. The API key (`Authorization: App …`) is a credential and never read.

use hyper::StatusCode;
use serde_json::json;

use super::{
    sandbox_id, segments, Endpoint, ExtractError, Extracted, NativeResponse, Refusal, RefusalKind,
    RequestView,
};

/// Infobip operations.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Op {
    /// `/sms/3/messages`.
    SendV3,
    /// `/sms/2/text/advanced` (and the v1 and binary `advanced` sends, of the same shape).
    SendV2,
    /// The older `single` and `multi` sends: `to` (a string or a list) at the top or in
    /// each of `messages[]`.
    Single,
    /// `GET /sms/1/text/query`: everything in the query string, `to` repeated or
    /// comma-separated.
    Query,
    /// `/sms/3/messages/outbound`: the v2 shape (`from`, `text`), answered as v3.
    OutboundV3,
    /// `/sms/3/text/query`: the query send, answered as v3.
    QueryV3,
}

impl Op {
    /// Whether the endpoint is of the v3 API, which answers errors in its own shape.
    fn v3(self) -> bool {
        matches!(self, Op::SendV3 | Op::OutboundV3 | Op::QueryV3)
    }
}

/// Infobip's sending endpoints.
pub const ENDPOINTS: &[Endpoint] = &[
    Endpoint {
        method: "POST",
        pattern: "/sms/3/messages",
        op: super::Op::Infobip(Op::SendV3),
    },
    // `SmsApi.sendSmsOutbound` of the official clients.
    Endpoint {
        method: "POST",
        pattern: "/sms/3/messages/outbound",
        op: super::Op::Infobip(Op::OutboundV3),
    },
    Endpoint {
        method: "POST",
        pattern: "/sms/2/text/advanced",
        op: super::Op::Infobip(Op::SendV2),
    },
    Endpoint {
        method: "POST",
        pattern: "/sms/1/text/advanced",
        op: super::Op::Infobip(Op::SendV2),
    },
    Endpoint {
        method: "POST",
        pattern: "/sms/1/binary/advanced",
        op: super::Op::Infobip(Op::SendV2),
    },
    Endpoint {
        method: "POST",
        pattern: "/sms/2/binary/advanced",
        op: super::Op::Infobip(Op::SendV2),
    },
    Endpoint {
        method: "POST",
        pattern: "/sms/1/text/single",
        op: super::Op::Infobip(Op::Single),
    },
    Endpoint {
        method: "POST",
        pattern: "/sms/1/text/multi",
        op: super::Op::Infobip(Op::Single),
    },
    Endpoint {
        method: "POST",
        pattern: "/sms/1/binary/single",
        op: super::Op::Infobip(Op::Single),
    },
    Endpoint {
        method: "POST",
        pattern: "/sms/1/binary/multi",
        op: super::Op::Infobip(Op::Single),
    },
    Endpoint {
        method: "POST",
        pattern: "/sms/2/text/single",
        op: super::Op::Infobip(Op::Single),
    },
    Endpoint {
        method: "POST",
        pattern: "/sms/2/text/multi",
        op: super::Op::Infobip(Op::Single),
    },
    Endpoint {
        method: "POST",
        pattern: "/sms/2/binary/single",
        op: super::Op::Infobip(Op::Single),
    },
    Endpoint {
        method: "POST",
        pattern: "/sms/2/binary/multi",
        op: super::Op::Infobip(Op::Single),
    },
    Endpoint {
        method: "GET",
        pattern: "/sms/1/text/query",
        op: super::Op::Infobip(Op::Query),
    },
    Endpoint {
        method: "GET",
        pattern: "/sms/2/text/query",
        op: super::Op::Infobip(Op::Query),
    },
    Endpoint {
        method: "POST",
        pattern: "/sms/1/text/query",
        op: super::Op::Infobip(Op::Query),
    },
    Endpoint {
        method: "POST",
        pattern: "/sms/2/text/query",
        op: super::Op::Infobip(Op::Query),
    },
    // The successor of `/sms/1/text/query`, with the same parameters.
    Endpoint {
        method: "GET",
        pattern: "/sms/3/text/query",
        op: super::Op::Infobip(Op::QueryV3),
    },
    Endpoint {
        method: "POST",
        pattern: "/sms/3/text/query",
        op: super::Op::Infobip(Op::QueryV3),
    },
];

/// Infobip API roots that pass through.
pub const ROOTS: &[&str] = &["/sms/1/**", "/sms/2/**", "/sms/3/**"];

/// Reads an Infobip request.
pub fn extract(op: Op, req: &RequestView<'_>) -> Result<Extracted, ExtractError> {
    match op {
        Op::Single => return extract_single(req),
        Op::Query | Op::QueryV3 => return extract_query(req),
        Op::SendV2 | Op::SendV3 | Op::OutboundV3 => {}
    }
    if !req.is_json() {
        return Err(ExtractError::MalformedBody("Infobip takes a JSON body"));
    }
    let v = req.json()?;
    let messages = v
        .get("messages")
        .and_then(serde_json::Value::as_array)
        .ok_or(ExtractError::MissingRecipient(
            "messages[].destinations[].to",
        ))?;
    let mut out = Extracted {
        number_format: Some(crate::phone::NumberFormat::InternationalDigits),
        segments: 1,
        ..Extracted::default()
    };
    for m in messages {
        let destinations = m
            .get("destinations")
            .and_then(serde_json::Value::as_array)
            .ok_or(ExtractError::MissingRecipient(
                "messages[].destinations[].to",
            ))?;
        for d in destinations {
            let to = super::json_str(d, "to").ok_or(ExtractError::MissingRecipient(
                "messages[].destinations[].to",
            ))?;
            out.recipients.push(to.to_owned());
        }
        let (sender, text) = match op {
            Op::SendV3 => (
                super::json_str(m, "sender"),
                m.get("content").and_then(|c| super::json_str(c, "text")),
            ),
            Op::SendV2 | Op::OutboundV3 | Op::Single | Op::Query | Op::QueryV3 => {
                (super::json_str(m, "from"), super::json_str(m, "text"))
            }
        };
        if out.sender.is_none() {
            out.sender = sender.map(str::to_owned);
        }
        out.segments = out.segments.max(text.map_or(1, segments::count));
    }
    if out.recipients.is_empty() {
        return Err(ExtractError::MissingRecipient(
            "messages[].destinations[].to",
        ));
    }
    Ok(out)
}

const ANY_TO: &str = "to";

/// A `to` of the older sends: one number or a list of them.
fn push_to(v: &serde_json::Value, out: &mut Vec<String>) -> Result<(), ExtractError> {
    match v.get("to") {
        Some(serde_json::Value::String(s)) => out.push(s.clone()),
        Some(serde_json::Value::Array(a)) => {
            for t in a {
                out.push(
                    t.as_str()
                        .ok_or(ExtractError::MissingRecipient(ANY_TO))?
                        .to_owned(),
                );
            }
        }
        _ => return Err(ExtractError::MissingRecipient(ANY_TO)),
    }
    Ok(())
}

/// Reads `/sms/{1,2}/{text,binary}/{single,multi}`.
fn extract_single(req: &RequestView<'_>) -> Result<Extracted, ExtractError> {
    if !req.is_json() {
        return Err(ExtractError::MalformedBody("Infobip takes a JSON body"));
    }
    let v = req.json()?;
    let mut out = Extracted {
        number_format: Some(crate::phone::NumberFormat::InternationalDigits),
        segments: 1,
        ..Extracted::default()
    };
    // `single` reads a top-level `to`, `multi` each of `messages[]`: a body with both is
    // read both ways, so that every number either endpoint may send to is decided.
    let mut messages: Vec<&serde_json::Value> = match v.get("messages") {
        Some(serde_json::Value::Array(m)) => m.iter().collect(),
        Some(_) => return Err(ExtractError::MissingRecipient(ANY_TO)),
        None => Vec::new(),
    };
    if messages.is_empty() || v.get("to").is_some() {
        messages.insert(0, &v);
    }
    for m in messages {
        push_to(m, &mut out.recipients)?;
        if out.sender.is_none() {
            out.sender = super::json_str(m, "from").map(str::to_owned);
        }
        let text = super::json_str(m, "text");
        out.segments = out.segments.max(text.map_or(1, segments::count));
    }
    if out.recipients.is_empty() {
        return Err(ExtractError::MissingRecipient(ANY_TO));
    }
    Ok(out)
}

/// Reads `GET /sms/1/text/query`.
fn extract_query(req: &RequestView<'_>) -> Result<Extracted, ExtractError> {
    let query = req.query.unwrap_or("").as_bytes();
    let recipients: Vec<String> = super::form_values(query, "to")
        .iter()
        .flat_map(|t| t.split(','))
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .map(str::to_owned)
        .collect();
    if recipients.is_empty() {
        return Err(ExtractError::MissingRecipient(ANY_TO));
    }
    Ok(Extracted {
        recipients,
        number_format: Some(crate::phone::NumberFormat::InternationalDigits),
        sender: super::form_value(query, "from"),
        segments: super::form_value(query, "text").map_or(1, |t| segments::count(&t)),
        ..Extracted::default()
    })
}

/// Infobip's native error for a refusal.
pub fn refusal(op: Op, refusal: &Refusal<'_>) -> NativeResponse {
    let (status, id) = match refusal.kind {
        RefusalKind::Throttle { .. } => (StatusCode::TOO_MANY_REQUESTS, "TOO_MANY_REQUESTS"),
        RefusalKind::Block => (StatusCode::FORBIDDEN, "REJECTED"),
    };
    let message = refusal.message();
    let resp = if !op.v3() {
        NativeResponse::json(
            status,
            &V2 {
                request_error: RequestError {
                    service_exception: ServiceException {
                        message_id: id,
                        text: message,
                    },
                },
            },
        )
    } else {
        NativeResponse::json(
            status,
            &V3 {
                error_code: format!("E{}", status.as_u16()),
                description: message,
                action: if status == StatusCode::TOO_MANY_REQUESTS {
                    "Retry later."
                } else {
                    "Do not retry: the destination is refused by policy."
                },
                violations: [],
                resources: [],
            },
        )
    };
    resp.with_retry_after(refusal)
}

/// The v2 API's error body.
#[derive(serde::Serialize)]
#[serde(rename_all = "camelCase")]
struct V2 {
    request_error: RequestError,
}

#[derive(serde::Serialize)]
#[serde(rename_all = "camelCase")]
struct RequestError {
    service_exception: ServiceException,
}

#[derive(serde::Serialize)]
#[serde(rename_all = "camelCase")]
struct ServiceException {
    message_id: &'static str,
    text: String,
}

/// The v3 API's error body.
#[derive(serde::Serialize)]
#[serde(rename_all = "camelCase")]
struct V3 {
    error_code: String,
    description: String,
    action: &'static str,
    violations: [(); 0],
    resources: [(); 0],
}

/// The sandbox's Infobip answer.
pub fn sandbox(op: Op, _req: &RequestView<'_>, ex: &Extracted) -> NativeResponse {
    let status = json!({"groupId": 1, "groupName": "PENDING", "id": 26, "name": "PENDING_ACCEPTED", "description": "Message sent to next instance"});
    let messages: Vec<serde_json::Value> = ex
        .recipients
        .iter()
        .map(|to| match op {
            Op::SendV3 | Op::QueryV3 => {
                json!({"messageId": sandbox_id("", 20), "status": status, "destination": to})
            }
            Op::SendV2 | Op::OutboundV3 | Op::Single | Op::Query => {
                json!({"messageId": sandbox_id("", 20), "status": status, "to": to})
            }
        })
        .collect();
    NativeResponse::json(
        StatusCode::OK,
        &json!({"bulkId": sandbox_id("", 20), "messages": messages}),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decide::Reason;
    use crate::providers::tests::{json_headers, view};

    #[test]
    fn v3_and_v2_destinations() {
        let h = json_headers();
        let v3 = br#"{"messages":[{"sender":"ACME","destinations":[{"to":"447400123456"},{"to":"447400123457"}],"content":{"text":"hi"}}]}"#;
        let ex = extract(Op::SendV3, &view(&h, &[], v3)).unwrap();
        assert_eq!(ex.recipients, vec!["447400123456", "447400123457"]);
        assert_eq!(ex.sender.as_deref(), Some("ACME"));
        let v2 =
            br#"{"messages":[{"from":"ACME","destinations":[{"to":"447400123456"}],"text":"hi"}]}"#;
        assert_eq!(
            extract(Op::SendV2, &view(&h, &[], v2)).unwrap().recipients,
            vec!["447400123456"]
        );
        assert!(matches!(
            extract(Op::SendV3, &view(&h, &[], br#"{"messages":[{}]}"#)),
            Err(ExtractError::MissingRecipient(_))
        ));
    }

    #[test]
    fn error_shapes() {
        let t = Refusal {
            kind: RefusalKind::Throttle {
                retry_after: std::time::Duration::from_secs(1),
            },
            reason: Reason::RateLimited,
            rule: "r",
            recipient: None,
            recipients: 1,
        };
        let r = refusal(Op::SendV2, &t);
        assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS);
        let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
        assert_eq!(
            v["requestError"]["serviceException"]["messageId"],
            "TOO_MANY_REQUESTS"
        );
        let r = refusal(
            Op::SendV3,
            &Refusal {
                kind: RefusalKind::Block,
                ..t
            },
        );
        let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
        assert_eq!(v["errorCode"], "E403");
    }
}
