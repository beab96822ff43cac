// Drives one official Node SDK against a base URL (smsfence, or the mock upstream).
//   node drive.js PROVIDER BASE_URL TO
// Sends one message to TO with the SDK's ordinary send call, changed in nothing but its
// base URL, and prints one JSON line: {"ok": true} or
// {"ok": false, "error": <exception class>, "status": <HTTP status or null>,
//  "code": <provider error code as the SDK exposes it, or null>, "message": <error text>}.
// Used by tests/sdk.rs; never talks to a real provider (every URL is BASE_URL).
const [provider, rawBase, to] = process.argv.slice(2);
const base = rawBase.replace(/\/$/, "");
const TEXT = "Your code is 123456";

function out(v) {
  console.log(JSON.stringify(v));
}

function fail(e, status, code, message) {
  out({ ok: false, error: e.constructor.name, status: status ?? null, code: code ?? null, message: String(message ?? e.message).slice(0, 1000) });
}

async function twilioSend() {
  const twilio = require("twilio");
  const client = twilio("ACtest", "secret");
  client.api.baseUrl = base;
  try {
    await client.messages.create({ to, from: "+15005550006", body: TEXT });
    out({ ok: true });
  } catch (e) {
    fail(e, e.status, e.code, e.message);
  }
}

async function telnyxSend() {
  const Telnyx = require("telnyx");
  const client = new Telnyx({ apiKey: "KEY_test", baseURL: base + "/v2" });
  try {
    await client.messages.send({ from: "+15005550006", to, text: TEXT });
    out({ ok: true });
  } catch (e) {
    if (!(e instanceof Telnyx.APIError)) throw e;
    fail(e, e.status, e.error?.errors?.[0]?.code, e.message);
  }
}

async function vonageSend() {
  const { Vonage } = require("@vonage/server-sdk");
  const client = new Vonage({ apiKey: "abcd1234", apiSecret: "Secret123" }, { restHost: base, apiHost: base });
  try {
    await client.sms.send({ to: to.replace(/^\+/, ""), from: "ACME", text: TEXT });
    out({ ok: true });
  } catch (e) {
    // HTTP 200 with a per-message status: the error holds the parsed answer, not the status.
    const failed = typeof e.getFailedMessages === "function" ? e.getFailedMessages()[0] : undefined;
    if (!failed) throw e;
    fail(e, null, failed.status, failed.errorText);
  }
}

const drivers = { twilio: twilioSend, telnyx: telnyxSend, vonage: vonageSend };
drivers[provider]().catch((e) => {
  out({ ok: false, error: "driver:" + e.constructor.name, message: String(e.message) });
  process.exit(1);
});
