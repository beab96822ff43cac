//! The shipped generic-API examples through the real proxy.

mod common;

use common::*;

const RULES: &str = "\
[[limit]]\nname = \"cooldown\"\nkey = \"number\"\nrate = \"1/60s\"\nburst = 1\n\
[[policy]]\nname = \"no-premium\"\ndeny_types = [\"premium_rate\"]\n";

fn example(name: &str, upstream: &str) -> String {
    let path = format!(
        "{}/examples/generic/{name}.toml",
        env!("CARGO_MANIFEST_DIR")
    );
    let text = std::fs::read_to_string(path).unwrap();
    let line = text.lines().find(|l| l.starts_with("upstream = ")).unwrap();
    text.replace(line, &format!("upstream = \"{upstream}\""))
}

#[tokio::test]
async fn mocean_comma_list() {
    let up = MockUpstream::with(|_| Reply::json(202, r#"{"messages":[{"status":0}]}"#)).await;
    let p = Proxy::start(&example("mocean", &up.url()), &[("r.toml", RULES)]).await;
    let body = "mocean-api-key=k&mocean-api-secret=s&mocean-from=ACME&mocean-to=447400123456%2C447400123457&mocean-text=Code+1";
    let a = send("POST", &p.url("/rest/2/sms"), &[FORM], body).await;
    assert_eq!(a.status, 202);
    assert_eq!(up.requests()[0].body, body.as_bytes());
    // One of the two again: throttled as a whole, in Mocean's shape.
    let b = send(
        "POST",
        &p.url("/rest/2/sms"),
        &[FORM],
        "mocean-to=447400123458,447400123457&mocean-text=x",
    )
    .await;
    assert_eq!(b.status, 429);
    assert_eq!(b.json()["messages"][0]["status"], 32);
    assert!(b.json()["err_msg"]
        .as_str()
        .unwrap()
        .contains("recipient 2 of 2"));
    let c = send(
        "POST",
        &p.url("/rest/2/sms"),
        &[FORM],
        "mocean-to=449098790123&mocean-text=x",
    )
    .await;
    assert_eq!(c.status, 200);
    assert_eq!(c.json()["messages"][0]["status"], 5);
    assert_eq!(up.requests().len(), 1);
}

#[tokio::test]
async fn smspm_query_string_get() {
    let up = MockUpstream::with(|_| Reply::json(200, "OK")).await;
    let p = Proxy::start(&example("smspm", &up.url()), &[("r.toml", RULES)]).await;
    let q = "/?hash=h4sh&token=s3cr3t-token&toNumber=447400123456&fromNumber=ACME&text=Code+1";
    assert_eq!(send("GET", &p.url(q), &[], "").await.status, 200);
    assert_eq!(up.requests()[0].uri, q);
    let b = send("GET", &p.url(q), &[], "").await;
    assert_eq!(b.status, 429);
    assert_eq!(b.text(), "ERROR rate_limited: retry after 60 s");
    let bad = send(
        "GET",
        &p.url("/?token=s3cr3t-token&toNumber=449098790123"),
        &[],
        "",
    )
    .await;
    assert_eq!(bad.status, 400);
    assert!(!bad.text().contains("s3cr3t"));
}

#[tokio::test]
async fn twofactor_number_in_the_path() {
    let up =
        MockUpstream::with(|_| Reply::json(200, r#"{"Status":"Success","Details":"sess"}"#)).await;
    let p = Proxy::start(&example("twofactor", &up.url()), &[("r.toml", RULES)]).await;
    let path = "/API/V1/0123456789abcdef0123456789abcdef/SMS/919812345678/AUTOGEN";
    assert_eq!(send("GET", &p.url(path), &[], "").await.status, 200);
    let b = send("GET", &p.url(path), &[], "").await;
    assert_eq!(b.status, 429);
    assert_eq!(b.json()["Status"], "Error");
    // An unknown path under the API reports the path with the key and number masked.
    let nf = send(
        "POST",
        &p.url("/API/V2/0123456789abcdef0123456789abcdef/SMS/919812345678"),
        &[],
        "",
    )
    .await;
    assert_eq!(nf.status, 404);
    assert!(
        !nf.text().contains("0123456789abcdef") && !nf.text().contains("919812345678"),
        "{}",
        nf.text()
    );
}

#[tokio::test]
async fn subscribers_array_counts_every_recipient() {
    let up = MockUpstream::with(|_| Reply::json(200, r#"{"success":true}"#)).await;
    let p = Proxy::start(&example("subscribers", &up.url()), &[("r.toml", RULES)]).await;
    let ok = r#"{"subscribers":["+447400123456","+447400123457"],"message":"Your code is 1"}"#;
    assert_eq!(
        send("POST", &p.url("/v3/send"), &[JSON], ok).await.status,
        200
    );
    let mixed = r#"{"subscribers":["+447400123999","+449098790123"],"message":"x"}"#;
    let b = send("POST", &p.url("/v3/send"), &[JSON], mixed).await;
    assert_eq!(b.status, 403);
    assert_eq!(b.json()["code"], "number_type");
    assert_eq!(up.requests().len(), 1);
    // The refused request consumed nothing: +447400123999 still passes.
    let again = r#"{"subscribers":["+447400123999"],"message":"x"}"#;
    assert_eq!(
        send("POST", &p.url("/v3/send"), &[JSON], again)
            .await
            .status,
        200
    );
}

#[tokio::test]
async fn generic_routes_work_with_the_sandbox() {
    let cfg = example("mocean", "sandbox");
    let p = Proxy::start(&cfg, &[]).await;
    let a = send(
        "POST",
        &p.url("/rest/2/sms"),
        &[FORM],
        "mocean-to=447400123456&mocean-text=x",
    )
    .await;
    assert_eq!(a.status, 202);
    assert_eq!(a.json()["messages"][0]["status"], 0);
}

#[test]
fn every_example_is_a_valid_config() {
    for name in ["mocean", "smspm", "twofactor", "subscribers"] {
        let path = format!(
            "{}/examples/generic/{name}.toml",
            env!("CARGO_MANIFEST_DIR")
        );
        let c = smsfence::config::Config::from_file(std::path::Path::new(&path)).unwrap();
        c.validate().unwrap_or_else(|e| panic!("{name}: {e}"));
    }
}

/// A generic route in front of `upstream`, with `generic` as its `[route.generic]` body.
fn route(upstream: &str, generic: &str) -> String {
    format!(
        "[[route]]\nname = \"g\"\npreset = \"generic\"\nupstream = \"{upstream}\"\n[route.generic]\n{generic}\n"
    )
}

#[tokio::test]
async fn a_form_route_reads_only_form_bodies() {
    let up = MockUpstream::with(|_| Reply::json(200, "{}")).await;
    let cfg = route(
        &up.url(),
        "method = \"POST\"\npath = \"/send\"\nroots = [\"/**\"]\nrecipients = { form = \"to\" }\nnumber_format = \"international_digits\"",
    );
    let p = Proxy::start(&cfg, &[("r.toml", RULES)]).await;
    // A multipart body naming a premium number, with a form-looking `to` inside another part.
    let multipart = "--b\r\nContent-Disposition: form-data; name=\"to\"\r\n\r\n449098790123\r\n--b\r\nContent-Disposition: form-data; name=\"x\"\r\n\r\n&to=447400123456&\r\n--b--\r\n";
    let a = send(
        "POST",
        &p.url("/send"),
        &[("content-type", "multipart/form-data; boundary=b")],
        multipart,
    )
    .await;
    assert_eq!(a.status, 403, "{}", a.text());
    assert_eq!(a.json()["error"]["code"], "unsupported_request");
    assert!(up.requests().is_empty());
}

#[tokio::test]
async fn a_json_route_reads_only_json_bodies() {
    let up = MockUpstream::with(|_| Reply::json(200, "{}")).await;
    let cfg = route(
        &up.url(),
        "method = \"POST\"\npath = \"/send\"\nrecipients = { json = \"/to\" }\nnumber_format = \"international_digits\"",
    );
    let p = Proxy::start(&cfg, &[("r.toml", RULES)]).await;
    // Valid JSON naming one number, and a form naming another to a form reader.
    let body = r#"{"to":"447400123456","x":"&to=449098790123&y="}"#;
    let a = send("POST", &p.url("/send"), &[FORM], body).await;
    assert_eq!(a.status, 403, "{}", a.text());
    assert_eq!(a.json()["error"]["code"], "unsupported_request");
    assert!(up.requests().is_empty());
}

#[tokio::test]
async fn a_json_number_that_is_not_whole_is_refused() {
    let up = MockUpstream::with(|_| Reply::json(200, "{}")).await;
    let cfg = route(
        &up.url(),
        "method = \"POST\"\npath = \"/send\"\nrecipients = { json = \"/to\" }\nnumber_format = \"international_digits\"",
    );
    let p = Proxy::start(&cfg, &[("r.toml", RULES)]).await;
    // Read as "44740012345.6" (447400123456 once the `.` is dropped); a provider may
    // truncate it to 44740012345.
    let a = send("POST", &p.url("/send"), &[JSON], r#"{"to":44740012345.6}"#).await;
    assert_eq!(a.status, 403, "{}", a.text());
    assert_eq!(a.json()["error"]["code"], "invalid_number");
    // A whole number is read as its digits.
    let b = send("POST", &p.url("/send"), &[JSON], r#"{"to":447400123456}"#).await;
    assert_eq!(b.status, 200, "{}", b.text());
    assert_eq!(up.requests().len(), 1);
}

#[tokio::test]
async fn the_method_is_matched_however_it_is_written() {
    let up = MockUpstream::with(|_| Reply::json(200, "{}")).await;
    let cfg = route(
        &up.url(),
        "method = \"post\"\npath = \"/send\"\nroots = [\"/**\"]\nrecipients = { form = \"to\" }\nnumber_format = \"international_digits\"",
    );
    let p = Proxy::start(&cfg, &[("r.toml", RULES)]).await;
    let a = send("POST", &p.url("/send"), &[FORM], "to=449098790123").await;
    assert_eq!(a.status, 403, "{}", a.text());
    assert_eq!(a.json()["error"]["code"], "number_type");
    assert!(up.requests().is_empty());
}

/// A provider that sends on a GET as on a POST lists both: each is decided. A method the
/// route does not list passes through under `roots`, like any other request there.
#[tokio::test]
async fn a_route_may_send_with_several_methods() {
    let up = MockUpstream::with(|_| Reply::json(200, "{}")).await;
    let generic = "path = \"/send\"\nroots = [\"/**\"]\nrecipients = { form = \"to\" }\nnumber_format = \"international_digits\"";
    let both = route(
        &up.url(),
        &format!("method = [\"GET\", \"post\"]\n{generic}"),
    );
    let p = Proxy::start(&both, &[("r.toml", RULES)]).await;
    for (method, query, body) in [
        ("GET", "?to=449098790123", ""),
        ("POST", "", "to=449098790123"),
    ] {
        let a = send(method, &p.url(&format!("/send{query}")), &[FORM], body).await;
        assert_eq!(a.status, 403, "{method}: {}", a.text());
        assert_eq!(a.json()["error"]["code"], "number_type", "{method}");
    }
    assert!(up.requests().is_empty());

    let post = route(&up.url(), &format!("method = \"POST\"\n{generic}"));
    let p = Proxy::start(&post, &[("r.toml", RULES)]).await;
    let a = send("GET", &p.url("/send?to=449098790123"), &[], "").await;
    assert_eq!(a.status, 200, "{}", a.text());
    assert_eq!(up.requests().len(), 1);

    for bad in [
        "method = []",
        "method = [\"POST\", \"BAD METHOD\"]",
        "method = 5",
    ] {
        let cfg = route(&up.url(), &format!("{bad}\n{generic}"));
        let err = smsfence::config::Config::from_toml("g.toml", &cfg)
            .and_then(|c| c.validate())
            .unwrap_err()
            .to_string();
        assert!(err.contains("method"), "{bad}: {err}");
    }
}

#[tokio::test]
async fn a_form_recipient_also_in_the_query_string_is_decided() {
    let up = MockUpstream::with(|_| Reply::json(200, "{}")).await;
    let cfg = route(
        &up.url(),
        "method = \"POST\"\npath = \"/send\"\nrecipients = { form = \"to\" }\nnumber_format = \"international_digits\"",
    );
    let p = Proxy::start(&cfg, &[("r.toml", RULES)]).await;
    let a = send(
        "POST",
        &p.url("/send?to=449098790123"),
        &[FORM],
        "to=447400123456",
    )
    .await;
    assert_eq!(a.status, 403, "{}", a.text());
    assert!(up.requests().is_empty());
}

#[tokio::test]
async fn every_element_a_json_wildcard_names_has_its_recipient() {
    let up = MockUpstream::with(|_| Reply::json(200, "{}")).await;
    let cfg = route(
        &up.url(),
        "method = \"POST\"\npath = \"/send\"\nrecipients = { json = \"/messages/*/to\" }\nnumber_format = \"international_digits\"",
    );
    let p = Proxy::start(&cfg, &[("r.toml", RULES)]).await;
    for body in [
        // The second message's number under a spelling a case-blind reader (Go,
        // ASP.NET) takes for `to`.
        r#"{"messages":[{"to":"447400123456"},{"To":"449098790123"}]}"#,
        // Both spellings in one object: such a reader may keep either.
        r#"{"messages":[{"to":"447400123456","TO":"449098790123"}]}"#,
    ] {
        let a = send("POST", &p.url("/send"), &[JSON], body).await;
        assert_eq!(a.status, 403, "{body}: {}", a.text());
        assert_eq!(a.json()["error"]["code"], "unsupported_request", "{body}");
    }
    assert!(up.requests().is_empty());
    let ok = r#"{"messages":[{"to":"447400123456"},{"to":"447400123457"}]}"#;
    assert_eq!(send("POST", &p.url("/send"), &[JSON], ok).await.status, 200);
}

#[tokio::test]
async fn a_head_on_a_get_send_path_is_decided_as_the_get() {
    // Servers commonly answer a HEAD by running the GET's handler (and drop the body).
    let up = MockUpstream::with(|_| Reply::json(200, "{}")).await;
    let cfg = route(
        &up.url(),
        "method = \"GET\"\npath = \"/send\"\nroots = [\"/**\"]\nrecipients = { query = \"to\" }\nnumber_format = \"international_digits\"",
    );
    let p = Proxy::start(&cfg, &[("r.toml", RULES)]).await;
    let a = send("HEAD", &p.url("/send?to=449098790123"), &[], "").await;
    assert_eq!(a.status, 403);
    assert!(up.requests().is_empty());
    // Other requests under the root still pass.
    assert_eq!(send("HEAD", &p.url("/status"), &[], "").await.status, 200);
}

#[tokio::test]
async fn a_form_field_a_server_may_read_as_the_recipients_is_unsupported() {
    let up = MockUpstream::with(|_| Reply::json(200, "{}")).await;
    let cfg = route(
        &up.url(),
        "method = \"POST\"\npath = \"/send\"\nrecipients = { form = \"to_number\" }\nnumber_format = \"international_digits\"",
    );
    let p = Proxy::start(&cfg, &[("r.toml", RULES)]).await;
    for body in [
        // PHP and Rack read `to_number[]` as the list `to_number`, the last one winning.
        "to_number=447400123456&to_number%5B%5D=449098790123",
        "to_number=447400123456&to_number[0]=449098790123",
        // ASP.NET binds form names ignoring case.
        "to_number=447400123456&TO_NUMBER=449098790123",
        // PHP reads `.` and ` ` in a name as `_`.
        "to_number=447400123456&to.number=449098790123",
        "to_number=447400123456&to+number=449098790123",
    ] {
        let a = send("POST", &p.url("/send"), &[FORM], body).await;
        assert_eq!(a.status, 403, "{body}: {}", a.text());
        assert_eq!(a.json()["error"]["code"], "unsupported_request", "{body}");
        let q = send("POST", &p.url(&format!("/send?{body}")), &[FORM], "").await;
        assert_eq!(q.status, 403, "{body} in the query: {}", q.text());
    }
    assert!(up.requests().is_empty());
}
