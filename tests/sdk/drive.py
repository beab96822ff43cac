"""Drives one official provider SDK against a base URL (smsfence, or the mock upstream).

    python drive.py PROVIDER BASE_URL TO

Sends one message to TO with the SDK's ordinary send call, changed in nothing but its base
URL, and prints one JSON line:

    {"ok": true}
    {"ok": false, "error": <exception class>, "status": <HTTP status or null>,
     "code": <the provider's error code as the SDK exposes it, or null>,
     "message": <the error text an application can read from the exception>}

Used by tests/sdk.rs; never talks to a real provider (every URL is BASE_URL).
"""
import json
import re
import sys
import types

provider, base, to = sys.argv[1], sys.argv[2].rstrip("/"), sys.argv[3]
TEXT = "Your code is 123456"
extra = {}


def out(**kw):
    print(json.dumps({**kw, **extra}, default=str))
    sys.exit(0)


def fail(e, status, code, message):
    out(ok=False, error=type(e).__name__, status=status, code=code, message=str(message)[:1000])


def twilio_send():
    from twilio.rest import Client
    from twilio.base.exceptions import TwilioRestException

    client = Client("ACtest", "secret")
    client.api.base_url = base
    try:
        client.messages.create(to=to, from_="+15005550006", body=TEXT)
        out(ok=True)
    except TwilioRestException as e:
        fail(e, e.status, e.code, e.msg)


def telnyx_send():
    import telnyx

    client = telnyx.Telnyx(api_key="KEY_test", base_url=base + "/v2")
    try:
        client.messages.send(from_="+15005550006", to=to, text=TEXT)
        out(ok=True)
    except telnyx.APIStatusError as e:
        errors = e.body.get("errors", [{}]) if isinstance(e.body, dict) else [{}]
        fail(e, e.status_code, errors[0].get("code"), e.message)


def plivo_send():
    import plivo
    import plivo.rest.client as rest

    # `client.base_uri` is reset before every request; the module constant is what sticks.
    rest.PLIVO_API_BASE_URI = base + "/v1/Account"
    client = plivo.RestClient("MAXXXXXXXXXXXXXXXXXX", "token")
    try:
        client.messages.create(src="+15005550006", dst=to, text=TEXT)
        out(ok=True)
    except plivo.exceptions.PlivoRestError as e:
        # Plivo's exceptions carry only a message: no status, no code.
        fail(e, None, None, e)


def vonage_send():
    from requests.adapters import HTTPAdapter
    from vonage import Auth, HttpClientOptions, Vonage
    from vonage_sms import SmsMessage
    from vonage_sms.errors import SmsError

    host = base.split("://", 1)[1]
    client = Vonage(Auth(api_key="abcd1234", api_secret="Secret123"), HttpClientOptions(rest_host=host, api_host=host))

    # The Python SDK always builds https:// URLs. An adapter mounted for https:// on the
    # SDK's own session sends them as plain http to the same host, keeping the SDK's
    # retry policy; the request line, headers and body are the SDK's own.
    class PlainHttp(HTTPAdapter):
        def send(self, request, **kw):
            request.url = "http://" + request.url.split("://", 1)[1]
            return super().send(request, **kw)

    http = client.http_client
    http._session.mount("https://", PlainHttp(max_retries=http._adapter.max_retries))
    try:
        client.sms.send(SmsMessage(to=to.lstrip("+"), from_="ACME", text=TEXT))
        out(ok=True)
    except SmsError as e:
        # HTTP 200 with a per-message status: the SDK puts the status in its message.
        m = re.search(r"error code (\w+)", str(e))
        fail(e, http.last_response.status_code, m and m.group(1), e)


def sinch_send():
    from sinch import SinchClient
    import sinch.core.clients.retry_manager as retry_manager
    from sinch.domains.sms.api.v1.exceptions import SmsException

    # The SDK retries a 429 up to 3 times, sleeping for the Retry-After smsfence sends
    # (up to a minute each). Its retry loop runs unchanged; only its clock is virtual, so
    # the test does not sleep and can see how long the SDK would have waited.
    slept = []
    retry_manager.time = types.SimpleNamespace(sleep=slept.append)
    extra["slept"] = slept
    # Service-plan auth (static Bearer token): no OAuth token fetch. Project auth
    # (key_id/key_secret) would first POST to configuration.auth_origin for a token.
    client = SinchClient(service_plan_id="plan1", sms_api_token="token1", sms_region="us")
    client.configuration.sms_domain_with_service_plan_id = base
    try:
        client.sms.batches.send_sms(to=[to], from_="ACME", body=TEXT)
        out(ok=True)
    except SmsException as e:
        # The exception's message is only "Error <status>"; the text is in the body.
        body = e.http_response.body if isinstance(e.http_response.body, dict) else {}
        fail(e, e.response_status_code, body.get("code"), body.get("text", e))


def infobip_send():
    from infobip_api_client import ApiClient, Configuration, SmsApi
    from infobip_api_client.exceptions import ApiException
    from infobip_api_client.models import (
        SmsDestination,
        SmsMessage,
        SmsMessageContent,
        SmsRequest,
        SmsTextContent,
    )

    api = SmsApi(ApiClient(Configuration(host=base, api_key="key1")))
    request = SmsRequest(
        messages=[
            SmsMessage(
                sender="ACME",
                destinations=[SmsDestination(to=to.lstrip("+"))],
                content=SmsMessageContent(SmsTextContent(text=TEXT)),
            )
        ]
    )
    try:
        api.send_sms_messages(sms_request=request)
        out(ok=True)
    except ApiException as e:
        # 400/401/403/500 bodies are parsed into ApiError (`e.data`); others stay raw.
        code, text = getattr(e.data, "error_code", None), getattr(e.data, "description", None)
        if code is None:
            try:
                raw = json.loads(e.body)
                code, text = raw.get("errorCode"), raw.get("description")
            except (TypeError, ValueError):
                pass
        fail(e, e.status, code, text or e)


DRIVERS = {
    "twilio": twilio_send,
    "telnyx": telnyx_send,
    "plivo": plivo_send,
    "vonage": vonage_send,
    "sinch": sinch_send,
    "infobip": infobip_send,
}

if __name__ == "__main__":
    DRIVERS[provider]()
