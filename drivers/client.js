// wslifecycle's browser client: one ES module, no dependencies, no build step.
// `wslifecycle serve --serve-client` serves it at /client.js.
//
//   import { connect } from "https://ws.example.com/client.js";
//   const client = connect("wss://ws.example.com/", {
//     onmessage: ({ channel, seq, data }) => render(channel, data),
//     ondrift: (drift) => reload(drift.channel),   // a gap: reload the channel's state
//   });
//   client.subscribe("news");
//   client.publish("news", { headline: "hello" });
//
// It speaks the relay protocol of `wslifecycle serve` (core/relay.py) and
// reconnects, resumes and watches the server's liveness on its own.
//
// API
//   connect(url, options) -> Client (an EventTarget); opens at once.
//   client.subscribe(channel, { presence })  kept across reconnects
//   client.unsubscribe(channel)
//   client.publish(channel, data) -> bool     false (nothing sent) unless open:
//   client.send(text) -> bool                 neither is queued while away
//   client.close(code = 1000, reason = "")   stops for good (code 1000 or 3000-4999)
//   client.state   "connecting" (at first) | "open" | "reconnecting" | "stopped"
//   also exported: reconnects(code), retryDelay(n, policy, random), DEFAULT_POLICY
//
// Events: each is both a callback given in options (or set on the client,
// e.g. client.onmessage = f, called with the detail) and an event of the
// client (client.addEventListener("message", (e) => e.detail)):
//   message      { channel, seq, data } (+ local: true for a message a node
//                without its Redis delivered unsequenced; its seq is undefined)
//   drift        the server's drift notice { channel, since, oldest, epoch, reason }:
//                the messages after since and before oldest will not come
//   reconnect    { attempt, delay, code, reason }: a retry is due in delay
//                seconds (attempt 1 is the first after a drop)
//   statechange  { state, previous }
//   stop         { code, reason, gaveUp }: no more reconnects
//   frame        everything else the server sends (subscribed, published,
//                join, leave, members, error, ...; the parsed JSON, or the
//                raw text or ArrayBuffer when it is not a JSON object)
//
// Options (all optional; times in seconds, as in the server's flags):
//   policy             reconnect policy, see below
//   heartbeatInterval  30: probe a silent server this often; 0 turns it off
//   maxMissed          2: probes left unanswered before the server is dead
//   openTimeout        10: an attempt not open by then has failed
//   protocols          WebSocket subprotocols
//
// Reconnect policy (the same as the Python client's: core/client/policy.py). A retry follows a
// drop after a delay drawn uniformly from
// [0, min(maxDelay, baseDelay * 2^n)] ("full jitter"), n counting the
// retries since the last connection that stayed open resetAfter seconds
// (n = 0 for the first retry after a drop). Defaults: baseDelay 0.5,
// maxDelay 30, maxAttempts Infinity (after that many consecutive failed
// attempts the client stops, gaveUp: true), resetAfter 10. A close with
// 1000, 1002, 1003, 1007, 1008, 1009, 1010 or 3000-4999 stops the client;
// any other (1001 going away, 1005, 1006 dropped, 1011, 1012 restart,
// 1013 try later, 1014, ...) reconnects. policy.reconnects(code) overrides
// that choice.
//
// Resume. The client keeps, per channel, the last seq it delivered and its
// epoch (from subscribed, message and drift). After a reconnect it sends
// each subscription once, with since and epoch, so the server replays what
// was missed; a message whose seq is not above the last one delivered is a
// duplicate and is dropped. A drift moves the position to the drift's view
// (oldest - 1, in its epoch). Subscriptions made while away are sent on the
// next connect.
//
// Liveness. A browser cannot send or see ping frames (it answers the
// server's by itself). The client echoes the server's application heartbeat
// ({"type":"heartbeat",...}, --heartbeat-mode application or both), and,
// after each heartbeatInterval in which nothing came from the server, sends
// {"type":"ping","id":N}, which the relay echoes back (it is not passed on
// as a frame). Anything from the server clears the count of misses. After
// maxMissed unanswered probes and a full interval since the last one, the
// server is dead: the client drops the socket without waiting for it and
// reconnects as for 1006. Dead within heartbeatInterval * (maxMissed + 1)
// of the last thing heard (timers permitting: background tabs delay them).
//
// Limits. A browser does not say why a handshake failed: a refusal (403 for
// an Origin the server does not allow, 503 while it drains or is full) looks
// like a dropped connection (1006 before open), so it is retried with
// backoff like one; set maxAttempts to give up. The probes need a server
// that echoes a message it does not know (the relay does): against one that
// does not, set heartbeatInterval to 0. Publishes and raw sends are not
// queued while away: their result says whether they went out.

const STOP_CODES = new Set([1000, 1002, 1003, 1007, 1008, 1009, 1010]);

/** Whether a close with `code` is worth a reconnect (the default policy). */
export function reconnects(code) {
  return !(STOP_CODES.has(code) || (code >= 3000 && code <= 4999));
}

export const DEFAULT_POLICY = Object.freeze({
  baseDelay: 0.5,
  maxDelay: 30,
  maxAttempts: Infinity,
  resetAfter: 10,
  reconnects,
});

/** The delay (seconds) before retry `n` (0: the first after a drop). */
export function retryDelay(n, policy = DEFAULT_POLICY, random = Math.random) {
  return random() * Math.min(policy.maxDelay, policy.baseDelay * 2 ** n);
}

/** Open a client to `url` (ws:// or wss://); see the module header. */
export function connect(url, options = {}) {
  return new Client(url, options);
}

const EVENTS = ["message", "drift", "reconnect", "statechange", "stop", "frame"];
const DEAD = "no answer from the server";
const MAX_TIMEOUT = 2 ** 31 - 1; // ms: setTimeout's largest delay

function seconds(value, name, { positive = false } = {}) {
  if (typeof value !== "number" || Number.isNaN(value) || value < 0 || (positive && value === 0)) {
    throw new RangeError(`${name}: must be a number of seconds ≥ 0, got ${value}`);
  }
  return value;
}

class Client extends EventTarget {
  constructor(url, options) {
    super();
    const policy = { ...DEFAULT_POLICY, ...(options.policy || {}) };
    seconds(policy.baseDelay, "policy.baseDelay");
    seconds(policy.maxDelay, "policy.maxDelay");
    seconds(policy.resetAfter, "policy.resetAfter");
    seconds(policy.maxAttempts, "policy.maxAttempts");
    if (typeof policy.reconnects !== "function") {
      throw new TypeError("policy.reconnects: must be a function of a close code");
    }
    this.url = url;
    this.policy = Object.freeze(policy);
    this._interval = seconds(options.heartbeatInterval ?? 30, "heartbeatInterval") * 1000;
    this._maxMissed = options.maxMissed ?? 2;
    if (!Number.isInteger(this._maxMissed) || this._maxMissed < 1) {
      throw new RangeError(`maxMissed: must be an integer ≥ 1, got ${options.maxMissed}`);
    }
    this._openTimeout = seconds(options.openTimeout ?? 10, "openTimeout", { positive: true });
    this._protocols = options.protocols;
    for (const name of EVENTS) this["on" + name] = options["on" + name] ?? null;

    this.state = "connecting";
    // channel -> { presence, seq, epoch }: seq/epoch null until the server says.
    this._subs = new Map();
    this._ws = null;
    this._openedAt = null; // performance.now() of the current connection's open
    this._retries = 0; // n of the policy
    this._timers = new Set();
    this._heard = 0; // performance.now() of the last thing from the server
    this._probed = -Infinity; // ... and of the last probe
    this._missed = 0;
    this._pings = 0; // the last probe id sent
    this._connect(); // a bad url throws here, to the caller
  }

  // ------------------------------------------------------------------ API

  subscribe(channel, { presence = false } = {}) {
    channel = String(channel);
    const sub = this._subs.get(channel);
    if (sub !== undefined && sub.presence === Boolean(presence)) return;
    const fresh = sub ?? { presence: false, seq: null, epoch: null };
    fresh.presence = Boolean(presence);
    this._subs.set(channel, fresh);
    if (this.state === "open") this._sendSubscribe(channel, fresh);
  }

  unsubscribe(channel) {
    channel = String(channel);
    if (!this._subs.delete(channel)) return;
    if (this.state === "open") this._ws.send(JSON.stringify({ type: "unsubscribe", channel }));
  }

  publish(channel, data) {
    return this.send(JSON.stringify({ type: "publish", channel: String(channel), data }));
  }

  send(text) {
    // Not while the socket closes either: a browser would drop the frame in silence.
    if (this.state !== "open" || this._ws.readyState !== WebSocket.OPEN) return false;
    this._ws.send(text);
    return true;
  }

  close(code = 1000, reason = "") {
    if (code !== 1000 && !(code >= 3000 && code <= 4999)) {
      throw new RangeError(`close: a browser may close with 1000 or 3000-4999, got ${code}`);
    }
    if (new TextEncoder().encode(reason).length > 123) {
      throw new RangeError("close: the reason must fit in 123 bytes of UTF-8");
    }
    if (this.state === "stopped") return;
    const ws = this._detach();
    if (ws !== null) ws.close(code, reason); // the close frame goes out; nobody waits for it
    this._stop(code, reason, false);
  }

  // ---------------------------------------------------------- connecting

  _connect() {
    this._setState("connecting");
    const ws = new WebSocket(this.url, this._protocols);
    ws.binaryType = "arraybuffer";
    this._ws = ws;
    this._openedAt = null;
    const timer = this._after(this._openTimeout * 1000, () => this._abandon("open timeout"));
    ws.onopen = () => {
      this._cancel(timer);
      this._opened();
    };
    ws.onmessage = (event) => this._received(event.data);
    ws.onclose = (event) => {
      this._cancel(timer);
      this._detach();
      this._dropped(event.code, event.reason);
    };
    ws.onerror = null; // a close event follows, with the code
  }

  _opened() {
    this._openedAt = performance.now();
    // Every subscription once, before "open" is announced: one made from
    // that event is sent by subscribe() itself.
    for (const [channel, sub] of this._subs) this._sendSubscribe(channel, sub);
    this._heard = this._openedAt; // the open is news from the server
    this._probed = -Infinity;
    this._missed = 0;
    if (this._interval > 0) this._watch(this._ws);
    this._setState("open");
  }

  _sendSubscribe(channel, sub) {
    const frame = { type: "subscribe", channel };
    if (sub.seq !== null) {
      frame.since = sub.seq; // resume: the server replays what came after
      if (sub.epoch !== null) frame.epoch = sub.epoch;
    }
    if (sub.presence) frame.presence = true;
    this._ws.send(JSON.stringify(frame));
  }

  /** Drop the current socket (if any) without waiting for it; it, or null. */
  _detach() {
    for (const timer of this._timers) clearTimeout(timer);
    this._timers.clear();
    const ws = this._ws;
    this._ws = null;
    if (ws !== null) ws.onopen = ws.onmessage = ws.onclose = null;
    return ws;
  }

  /** Give up on the current socket (never opened, or dead) as if it dropped. */
  _abandon(reason) {
    const ws = this._detach();
    if (ws !== null) ws.close();
    this._dropped(1006, reason);
  }

  _dropped(code, reason) {
    if (this.state === "stopped") return;
    if (!this.policy.reconnects(code)) {
      this._stop(code, reason, false);
      return;
    }
    const now = performance.now();
    if (this._openedAt !== null && now - this._openedAt >= this.policy.resetAfter * 1000) {
      this._retries = 0; // it stayed open long enough: a fresh start
    }
    this._openedAt = null;
    if (this._retries >= this.policy.maxAttempts) {
      this._stop(code, reason, true);
      return;
    }
    const delay = retryDelay(this._retries, this.policy);
    this._retries += 1;
    this._setState("reconnecting");
    this._after(delay * 1000, () => this._connect());
    this._emit("reconnect", { attempt: this._retries, delay, code, reason });
  }

  _stop(code, reason, gaveUp) {
    this._detach();
    this._setState("stopped");
    this._emit("stop", { code, reason, gaveUp });
  }

  // ------------------------------------------------------------ liveness

  _watch(ws) {
    const interval = this._interval;
    const check = () => {
      if (this._ws !== ws) return;
      const now = performance.now();
      if (this._heard > this._probed) {
        this._missed = 0; // the server spoke since the last probe
        const quiet = now - this._heard;
        if (quiet < interval) {
          this._after(interval - quiet, check);
          return;
        }
      } else if (this._missed >= this._maxMissed) {
        this._abandon(DEAD); // maxMissed probes and a full interval: nothing
        return;
      }
      this._missed += 1;
      this._probed = now;
      this._pings += 1;
      ws.send(JSON.stringify({ type: "ping", id: this._pings }));
      this._after(interval, check);
    };
    this._after(interval, check);
  }

  // ------------------------------------------------------------ receiving

  _received(data) {
    this._heard = performance.now();
    this._missed = 0;
    let frame = null;
    if (typeof data === "string" && data.startsWith("{")) {
      try {
        frame = JSON.parse(data);
      } catch {
        frame = null;
      }
    }
    if (frame === null || typeof frame !== "object" || Array.isArray(frame)) {
      this._emit("frame", data);
      return;
    }
    switch (frame.type) {
      case "heartbeat":
        this._ws.send(data); // the server's application heartbeat: echoed unchanged
        return;
      case "ping":
        if (Number.isInteger(frame.id) && frame.id >= 1 && frame.id <= this._pings) return;
        break; // not one of ours
      case "message":
        this._message(frame);
        return;
      case "subscribed":
        this._subscribed(frame);
        break;
      case "drift":
        this._drift(frame);
        return;
    }
    this._emit("frame", frame);
  }

  _message(frame) {
    const sub = this._subs.get(frame.channel);
    if (sub !== undefined && Number.isInteger(frame.seq)) {
      if (sub.seq !== null && frame.seq <= sub.seq) return; // a duplicate
      sub.seq = frame.seq;
    }
    const detail = { channel: frame.channel, seq: frame.seq, data: frame.data };
    if (frame.local) detail.local = true;
    this._emit("message", detail);
  }

  _subscribed(frame) {
    const sub = this._subs.get(frame.channel);
    if (sub === undefined || sub.seq !== null) return; // a resume: replay, or a drift, follows
    if (Number.isInteger(frame.seq)) sub.seq = frame.seq;
    if (typeof frame.epoch === "string") sub.epoch = frame.epoch;
  }

  _drift(frame) {
    const sub = this._subs.get(frame.channel);
    if (sub !== undefined && Number.isInteger(frame.oldest)) {
      const view = frame.oldest - 1;
      if (sub.seq === null || frame.epoch !== sub.epoch || frame.reason === "epoch") {
        sub.seq = view; // a new sequence: its numbering replaces ours
        sub.epoch = frame.epoch ?? sub.epoch;
      } else {
        // The same sequence: what was delivered since the request stays delivered.
        sub.seq = Math.max(sub.seq, view);
      }
    }
    this._emit("drift", frame);
  }

  // -------------------------------------------------------------- helpers

  _after(ms, fn) {
    if (!(ms <= MAX_TIMEOUT)) return null; // never (setTimeout would fire at once)
    const timer = setTimeout(() => {
      this._timers.delete(timer);
      fn();
    }, ms);
    this._timers.add(timer);
    return timer;
  }

  _cancel(timer) {
    clearTimeout(timer);
    this._timers.delete(timer);
  }

  _setState(state) {
    const previous = this.state;
    if (state === previous) return;
    this.state = state;
    this._emit("statechange", { state, previous });
  }

  _emit(type, detail) {
    const handler = this["on" + type];
    if (typeof handler === "function") {
      try {
        handler.call(this, detail);
      } catch (error) {
        report(error); // the application's fault must not stop the client
      }
    }
    this.dispatchEvent(new CustomEvent(type, { detail }));
  }
}

function report(error) {
  if (typeof globalThis.reportError === "function") globalThis.reportError(error);
  else setTimeout(() => { throw error; });
}
