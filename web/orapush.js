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
 * With authentication (auth.mode = "jwt"), pass getToken: a function that
 * returns a token (or a Promise of one), e.g. from an APEX Ajax callback.
 * The client sends it as the first frame on every connection, and again
 * before the token's exp, so the socket is never closed for expiry.
 */
(function (root) {
  "use strict";

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

  Client.prototype._setState = function (state) {
    if (this.state === state) return;
    this.state = state;
    if (this.opts.onStateChange) this.opts.onStateChange(state);
  };

  Client.prototype._open = function () {
    var self = this;
    this._setState(this.attempt ? "reconnecting" : "connecting");
    var ws;
    try {
      ws = new WebSocket(this.url);
    } catch (e) {
      this._scheduleReconnect();
      return;
    }
    this.ws = ws;
    ws.onopen = function () {
      self.attempt = 0;
      var subscribeAll = function () {
        if (self.ws !== ws) return;
        self._setState("connected");
        Object.keys(self.subs).forEach(function (channel) { self._sendSubscribe(channel); });
      };
      if (self.opts.getToken) {
        // The token goes first, so the subscriptions are checked against it.
        self._authenticate().then(subscribeAll, function () { ws.close(); });
      } else {
        subscribeAll();
      }
    };
    ws.onmessage = function (event) { self._onFrame(event.data); };
    ws.onclose = function (event) {
      if (self.ws !== ws) return;
      self.ws = null;
      clearTimeout(self.refreshTimer);
      if (self.closed) {
        self._setState("closed");
        return;
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

  /** Gets a token, sends it, and plans the next one ahead of its expiry. */
  Client.prototype._authenticate = function () {
    var self = this;
    return Promise.resolve(this.opts.getToken()).then(function (token) {
      self._send({ op: "auth", token: token });
      var exp = tokenExpiry(token);
      clearTimeout(self.refreshTimer);
      if (exp !== null) {
        // Refresh 30 s before expiry; halfway for tokens living under a minute.
        var left = exp * 1000 - Date.now();
        var wait = Math.max(1000, left > 60000 ? left - 30000 : left / 2);
        self.refreshTimer = setTimeout(function () { self._authenticate(); }, wait);
      }
      return token;
    });
  };

  Client.prototype._send = function (frame) {
    if (this.ws && this.ws.readyState === 1) this.ws.send(JSON.stringify(frame));
  };

  Client.prototype._sendSubscribe = function (channel) {
    var sub = this.subs[channel];
    var frame = { op: "subscribe", channel: channel };
    if (sub.epoch !== null) frame.since = { epoch: sub.epoch, offset: sub.offset };
    sub.recovering = !!frame.since;
    this._send(frame);
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
      case "subscribed":
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
        if (this.opts.onError) this.opts.onError(frame);
        else if (root.console) root.console.warn("orapush: " + frame.code + ": " + frame.message);
        break;
      default:
        break;
    }
  };

  /** Calls onMessage(data, frame) for every message on the channel. */
  Client.prototype.subscribe = function (channel, onMessage, onReset) {
    var self = this;
    var sub = this.subs[channel];
    if (!sub) {
      sub = this.subs[channel] = { handlers: [], resetHandlers: [], epoch: null, offset: 0, recovering: false };
      this._sendSubscribe(channel);
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
