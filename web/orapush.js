/*
 * orapush.js: the browser client for orapush. Plain JavaScript, no build step.
 *
 *   <script src="/orapush.js"></script>
 *   var client = orapush.connect();                 // ws(s)://<this host>/ws
 *   client.subscribe("emp", function (data, msg) { ... });
 *   client.refreshRegion("emp", "emp_report");      // APEX: refresh a region
 *
 * It reconnects with exponential backoff and jitter (0.5 s doubling up to
 * 20 s), resubscribes with the last epoch/offset it saw so the server replays
 * what was missed, drops duplicates by offset, and calls onReset(channel)
 * when the server could not replay everything (reload your data then).
 *
 * A connection counts as established, and onStateChange reports "connected",
 * only once the server has answered on it without closing it: the reply to
 * the token, or else the first "subscribed" (or a pong, with nothing to
 * subscribe to). Only then is the backoff reset, so a refused token or a
 * server that drops every socket is retried at 0.5, 1, 2, 4 ... s, not in a
 * tight loop.
 *
 * onError(error) reports what the server refused: error frames as
 * {code, message, channel?} (unauthorized, token_expired, forbidden,
 * bad_request, limit, ...; channel names the refused subscription), a close
 * for a bad or expired token (1008, 4001) with no error frame before it as
 * {code: "closed", closeCode, message}, and a getToken that failed as
 * {code: "token_unavailable", message}. A refused subscription is dropped:
 * call subscribe again to retry it. Without onError they go to console.warn.
 *
 * With authentication (auth.mode = "jwt"), pass getToken: a function that
 * returns a token (or a Promise of one), e.g. from an APEX Ajax callback.
 * The client sends it as the first frame on every connection, and again
 * before the token's exp, so the socket is never closed for expiry.
 */
(function (root) {
  "use strict";

  // Error frames the server follows with a close: the connection failed.
  var CLOSING_ERRORS = { unauthorized: true, token_expired: true, rate_limited: true };
  // Close codes for a bad token (or too many frames) and an expired token.
  var AUTH_CLOSES = { 1008: true, 4001: true };

  function defaultUrl() {
    var loc = root.location;
    return (loc.protocol === "https:" ? "wss://" : "ws://") + loc.host + "/ws";
  }

  function Client(url, opts) {
    this.url = url || defaultUrl();
    this.opts = opts || {};
    this.minDelay = this.opts.minDelayMs || 500;
    this.maxDelay = this.opts.maxDelayMs || 20000;
    this.subs = {}; // channel -> { handlers, resetHandlers, epoch, offset, recovering }
    this.state = "idle";
    this.attempt = 0;
    this.ws = null;
    this.established = false; // the server answered on this socket without closing it
    this.pending = []; // frames sent on this socket, not answered yet: { op, channel, sub }
    this.explained = false; // an error frame already said why this socket closes
    this.ready = false; // the token, if any, went out on this socket: subscribe now
    this.timer = null;
    this.refreshTimer = null;
    this.closed = false;
    this._open();
  }

  /** The exp claim (seconds) of a JWT, or null. */
  function tokenExpiry(token) {
    try {
      var part = token.split(".")[1].replace(/-/g, "+").replace(/_/g, "/");
      var exp = JSON.parse(root.atob(part)).exp;
      return typeof exp === "number" ? exp : null;
    } catch (e) {
      return null;
    }
  }

  function describe(e) {
    if (e && typeof e === "object") return String(e.message || e.statusText || e.status || e);
    return String(e);
  }

  Client.prototype._setState = function (state) {
    if (this.state === state) return;
    this.state = state;
    if (this.opts.onStateChange) this.opts.onStateChange(state);
  };

  Client.prototype._reportError = function (error) {
    if (this.opts.onError) this.opts.onError(error);
    else if (root.console) root.console.warn("orapush: " + error.code + ": " + (error.message || error.closeCode));
  };

  Client.prototype._open = function () {
    var self = this;
    this._setState(this.attempt ? "reconnecting" : "connecting");
    this.established = false;
    this.pending = [];
    this.explained = false;
    this.ready = false;
    var ws;
    try {
      ws = new WebSocket(this.url);
    } catch (e) {
      this._scheduleReconnect();
      return;
    }
    this.ws = ws;
    ws.onopen = function () {
      var subscribeAll = function () {
        if (self.ws !== ws) return;
        self.ready = true;
        var channels = Object.keys(self.subs);
        channels.forEach(function (channel) { self._sendSubscribe(channel); });
        // Without a token or a channel nothing would be answered, and only
        // an answer shows that the server keeps this socket.
        if (!channels.length && !self.opts.getToken) self._send({ op: "ping" });
      };
      if (self.opts.getToken) {
        // The token goes first, so the subscriptions are checked against it
        // (the server answers frames in order and closes on a bad token).
        self._authenticate().then(subscribeAll, function (e) {
          if (self.ws !== ws) return;
          self._reportError({ code: "token_unavailable", message: describe(e) });
          ws.close();
        });
      } else {
        subscribeAll();
      }
    };
    ws.onmessage = function (event) {
      if (self.ws === ws) self._onFrame(event.data);
    };
    ws.onclose = function (event) {
      if (self.ws !== ws) return;
      self.ws = null;
      clearTimeout(self.refreshTimer);
      if (self.closed) {
        self._setState("closed");
        return;
      }
      if (AUTH_CLOSES[event.code] && !self.explained) {
        self._reportError({ code: "closed", closeCode: event.code, message: event.reason || "" });
      }
      self._setState("disconnected");
      if (self.opts.onDisconnect) self.opts.onDisconnect(event.code, event.reason);
      self._scheduleReconnect();
    };
    ws.onerror = function () { /* a close event follows */ };
  };

  Client.prototype._scheduleReconnect = function () {
    var self = this;
    var base = Math.min(this.maxDelay, this.minDelay * Math.pow(2, this.attempt));
    var delay = base / 2 + Math.random() * base / 2; // "equal jitter"
    this.attempt += 1;
    clearTimeout(this.timer);
    this.timer = setTimeout(function () { self._open(); }, delay);
  };

  /** The server answered on this socket and kept it: start the backoff afresh. */
  Client.prototype._establish = function () {
    if (this.established) return;
    this.established = true;
    this.attempt = 0;
    this._setState("connected");
  };

  /** Gets a token, sends it, and plans the next one ahead of its expiry. */
  Client.prototype._authenticate = function () {
    var self = this;
    var token;
    try {
      token = this.opts.getToken();
    } catch (e) {
      return Promise.reject(e); // handled like a rejected Promise
    }
    return Promise.resolve(token).then(function (token) {
      self._send({ op: "auth", token: token });
      var exp = tokenExpiry(token);
      clearTimeout(self.refreshTimer);
      if (exp !== null) {
        // Refresh 30 s before expiry; halfway for tokens living under a minute.
        var left = exp * 1000 - Date.now();
        var wait = Math.max(1000, left > 60000 ? left - 30000 : left / 2);
        self.refreshTimer = setTimeout(function () {
          self._authenticate().then(null, function (e) {
            // The socket closes at exp (4001); the reconnect asks again.
            self._reportError({ code: "token_unavailable", message: describe(e) });
          });
        }, wait);
      }
      return token;
    });
  };

  /** Sends a request; each one gets exactly one answer, in order. */
  Client.prototype._send = function (frame, sub) {
    if (!this.ws || this.ws.readyState !== 1) return;
    this.ws.send(JSON.stringify(frame));
    this.pending.push({ op: frame.op, channel: frame.channel, sub: sub });
  };

  /** Takes the oldest unanswered request of this kind off the list. */
  Client.prototype._answered = function (op, channel) {
    for (var i = 0; i < this.pending.length; i++) {
      if (this.pending[i].op === op && this.pending[i].channel === channel) {
        this.pending.splice(i, 1);
        return;
      }
    }
  };

  Client.prototype._sendSubscribe = function (channel) {
    var sub = this.subs[channel];
    var frame = { op: "subscribe", channel: channel };
    if (sub.epoch !== null) frame.since = { epoch: sub.epoch, offset: sub.offset };
    sub.recovering = !!frame.since;
    this._send(frame, sub);
  };

  Client.prototype._onFrame = function (text) {
    var frame;
    try {
      frame = JSON.parse(text);
    } catch (e) {
      return;
    }
    var sub = frame.channel !== undefined ? this.subs[frame.channel] : null;
    switch (frame.type) {
      case "auth":
        this._answered("auth");
        this._establish();
        break;
      case "pong":
        this._answered("ping");
        this._establish();
        break;
      case "unsubscribed":
        // Also sent unasked, when a fresh token no longer allows a channel.
        this._answered("unsubscribe", frame.channel);
        break;
      case "subscribed":
        this._answered("subscribe", frame.channel);
        this._establish();
        if (!sub) return;
        if (!frame.recovered || sub.epoch === null) {
          // Nothing (more) will be replayed: continue from the latest offset.
          sub.epoch = frame.epoch;
          sub.offset = frame.offset;
        }
        if (sub.recovering && !frame.recovered) {
          sub.resetHandlers.forEach(function (h) { h(frame.channel); });
          if (this.opts.onReset) this.opts.onReset(frame.channel);
        }
        sub.recovering = false;
        if (this.opts.onSubscribed) this.opts.onSubscribed(frame);
        break;
      case "message":
        if (!sub) return;
        if (sub.epoch === frame.epoch && frame.offset <= sub.offset) return; // seen already
        sub.epoch = frame.epoch;
        sub.offset = frame.offset;
        sub.handlers.slice().forEach(function (h) { h(frame.data, frame); });
        break;
      case "error":
        this._onError(frame);
        break;
      default:
        break;
    }
  };

  /** An error frame: a failed connection, or one refused request. */
  Client.prototype._onError = function (frame) {
    // Every error answers the oldest unanswered request, except an expiry,
    // which the server sends unasked.
    var request = frame.code === "token_expired" ? null : this.pending.shift();
    var error = { code: frame.code, message: frame.message };
    var channel = frame.channel !== undefined ? frame.channel : request && request.channel;
    if (channel !== undefined) error.channel = channel;
    if (CLOSING_ERRORS[frame.code]) {
      this.explained = true; // the close that follows is this error, not news
    } else {
      // A refusal on an open socket: the connection itself works.
      this._establish();
      if (request && request.op === "subscribe" && frame.code !== "already_subscribed" &&
          this.subs[channel] === request.sub) {
        // Asking again on every reconnect would be refused again.
        delete this.subs[channel];
      }
    }
    this._reportError(error);
  };

  /** Calls onMessage(data, frame) for every message on the channel. */
  Client.prototype.subscribe = function (channel, onMessage, onReset) {
    var self = this;
    var sub = this.subs[channel];
    if (!sub) {
      sub = this.subs[channel] = { handlers: [], resetHandlers: [], epoch: null, offset: 0, recovering: false };
      // Before the token has gone out, the connection subscribes it after.
      if (this.ready) this._sendSubscribe(channel);
    }
    sub.handlers.push(onMessage);
    if (onReset) sub.resetHandlers.push(onReset);
    return {
      unsubscribe: function () {
        var s = self.subs[channel];
        if (!s) return;
        s.handlers = s.handlers.filter(function (h) { return h !== onMessage; });
        s.resetHandlers = s.resetHandlers.filter(function (h) { return h !== onReset; });
        if (s.handlers.length === 0) {
          delete self.subs[channel];
          self._send({ op: "unsubscribe", channel: channel });
        }
      }
    };
  };

  /**
   * APEX helper: refresh the region with this Static ID when a message
   * arrives on the channel (or when missed messages could not be replayed).
   * A burst of messages within delayMs (default 250) is one refresh.
   * options.filter(data) may return false to ignore a message.
   */
  Client.prototype.refreshRegion = function (channel, regionStaticId, options) {
    options = options || {};
    var delay = options.delayMs === undefined ? 250 : options.delayMs;
    var pending = null;
    function refresh() {
      if (pending) return;
      pending = setTimeout(function () {
        pending = null;
        var region = root.apex && root.apex.region ? root.apex.region(regionStaticId) : null;
        if (region) region.refresh();
        else if (root.console) root.console.warn("orapush: no APEX region with Static ID " + regionStaticId);
      }, delay);
    }
    return this.subscribe(channel, function (data) {
      if (options.filter && !options.filter(data)) return;
      refresh();
    }, refresh);
  };

  /** Closes the connection for good. */
  Client.prototype.close = function () {
    this.closed = true;
    clearTimeout(this.timer);
    clearTimeout(this.refreshTimer);
    if (this.ws) this.ws.close(1000);
    else this._setState("closed");
  };

  root.orapush = {
    connect: function (url, opts) { return new Client(url, opts); },
    Client: Client
  };
})(typeof window !== "undefined" ? window : this);
