// Tells the server when the page has painted a streamed answer's updates, so it sends the next
// update only then, with everything that arrived meanwhile (streamchat/core/paint.py). Without
// this script the server paces updates by time alone, as before.
//
// Chainlit's page talks Socket.IO over a websocket it opens after this script has run; this
// watches that websocket's incoming `stream_token` events and, once the browser has rendered
// them and painted a frame, sends `stream_painted` {id, n} on the same connection: n is how
// many stream_token events of message `id` the page has painted. It also shows a long answer
// streamed in parts as one answer (below).
(() => {
  "use strict";
  const Native = window.WebSocket;
  if (typeof Native !== "function" || Native.__streamchatPaintAck) return;
  const EVENT_PREFIX = '42["stream_token",';
  const received = new Map(); // message id -> stream_token events received
  const acked = new Map(); // message id -> count last acknowledged
  const waiting = new Set(); // message ids with an acknowledgement on its way

  function afterPaint(callback) {
    // Let the page's render of what arrived run first (a task queued after it), then wait
    // for the frame that shows it, then act after that frame's paint.
    setTimeout(() => requestAnimationFrame(() => setTimeout(callback, 0)), 0);
  }

  function acknowledge(socket, id) {
    if (waiting.has(id)) return;
    waiting.add(id);
    const count = received.get(id) || 0;
    afterPaint(() => {
      waiting.delete(id);
      if (socket.readyState !== Native.OPEN) return;
      if ((acked.get(id) || 0) < count) {
        acked.set(id, count);
        socket.send("42" + JSON.stringify(["stream_painted", { id: id, n: count }]));
      }
      if ((received.get(id) || 0) > count) acknowledge(socket, id);
    });
  }

  // A long answer streams in parts, one message each (streamchat/core/segments.py), marked in
  // their metadata; shown as one answer: no avatar before a later part, no buttons under an
  // earlier one, no gap between them, and a finished part off screen is not laid out again.
  const SEGMENT_KEY = "streamchat_segment";
  const styled = new Set(); // "<id> first" / "<id> continued": rules already added
  let sheet = null;
  function addRule(key, rule) {
    if (styled.has(key)) return;
    styled.add(key);
    if (sheet === null) {
      const style = document.createElement("style");
      style.id = "streamchat-segments";
      document.head.appendChild(style);
      sheet = style.sheet;
    }
    sheet.insertRule(rule, sheet.cssRules.length);
  }
  function metadataOf(step) {
    // A stored thread's steps may carry their metadata as JSON text (SQLite keeps it so).
    let metadata = step && step.metadata;
    if (typeof metadata === "string") {
      try {
        metadata = JSON.parse(metadata);
      } catch (error) {
        return null;
      }
    }
    return metadata && typeof metadata === "object" ? metadata : null;
  }
  function showAsOne(step) {
    const metadata = metadataOf(step);
    const segment = metadata && metadata[SEGMENT_KEY];
    if (!segment || typeof step.id !== "string") return;
    noteWholeAnswer(step.id, metadata, segment);
    const id = "#step-" + CSS.escape(step.id);
    const outer = '[data-step-type="assistant_message"]:has(> div > ' + id + ")";
    if (segment.index > 0) {
      addRule(step.id + " later", outer + " { padding-top: 0 !important; }");
      addRule(step.id + " avatar", id + " .ai-message > :first-child { visibility: hidden; }");
    }
    if (segment.continued) {
      addRule(step.id + " continued", outer + " { padding-bottom: 0 !important; }");
      addRule(step.id + " pad", id + " { padding-bottom: 0 !important; }");
      addRule(
        step.id + " end",
        id + " .message-content .prose > :last-child { margin-bottom: 1.25em !important; }",
      );
      addRule(step.id + " buttons", id + " .message-content ~ * { display: none !important; }");
      addRule(
        step.id + " skip",
        outer + " { content-visibility: auto; contain-intrinsic-size: auto 2000px; }",
      );
    }
  }
  // The copy button under the last part copies the whole answer, not the last part alone: the
  // last part's stored metadata holds the answer's text (streamchat/core/history.py), and the
  // page's own copy handler, when it writes to the clipboard right after that click, writes it.
  const ANSWER_KEY = "streamchat";
  const wholeAnswers = new Map(); // the last part's id -> the whole answer's Markdown
  let pendingCopy = null; // { text, until }: what the copy just clicked writes instead
  function noteWholeAnswer(id, metadata, segment) {
    const stored = metadata[ANSWER_KEY];
    if (segment.index > 0 && !segment.continued && stored && typeof stored.text === "string") {
      wholeAnswers.set(id, stored.text);
    }
  }
  document.addEventListener(
    "click",
    (event) => {
      const target = event.target instanceof Element ? event.target : null;
      const button = target && target.closest("button");
      if (!button || !button.querySelector("svg.lucide-copy")) return;
      if (button.closest(".message-content")) return; // a code block's own copy button
      const step = button.closest('[id^="step-"]');
      const whole = step && wholeAnswers.get(step.id.slice("step-".length));
      pendingCopy = whole === undefined ? null : { text: whole, until: Date.now() + 1000 };
    },
    true,
  );
  function takePendingCopy() {
    const pending = pendingCopy;
    pendingCopy = null;
    return pending !== null && Date.now() <= pending.until ? pending.text : null;
  }
  const clipboard = navigator.clipboard;
  if (clipboard && typeof clipboard.writeText === "function") {
    const writeText = clipboard.writeText.bind(clipboard);
    const write = typeof clipboard.write === "function" ? clipboard.write.bind(clipboard) : null;
    clipboard.writeText = (text) => {
      const whole = takePendingCopy();
      return writeText(whole === null ? text : whole);
    };
    if (write !== null) {
      clipboard.write = (items) => {
        const whole = takePendingCopy();
        return whole === null ? write(items) : writeText(whole);
      };
    }
  }

  function markSegments(data) {
    // new_message, update_message, stream_start: a step; resume_thread: a thread's steps.
    let payload;
    try {
      payload = JSON.parse(data.slice(2))[1];
    } catch (error) {
      return;
    }
    if (payload && Array.isArray(payload.steps)) payload.steps.forEach(showAsOne);
    else showAsOne(payload);
  }
  // A stored thread opened from the sidebar is fetched over HTTP.
  const nativeFetch = window.fetch;
  if (typeof nativeFetch === "function") {
    window.fetch = function (...args) {
      const answer = nativeFetch.apply(this, args);
      const url = String(args[0] && args[0].url ? args[0].url : args[0]);
      if (url.includes("/project/thread/")) {
        answer
          .then((response) => response.clone().json())
          .then((thread) => thread && Array.isArray(thread.steps) && thread.steps.forEach(showAsOne))
          .catch(() => {});
      }
      return answer;
    };
  }

  function watch(socket) {
    socket.addEventListener("message", (event) => {
      const data = event.data;
      if (typeof data !== "string") return;
      if (!data.startsWith(EVENT_PREFIX)) {
        if (data.startsWith("42[") && data.includes(SEGMENT_KEY)) markSegments(data);
        return;
      }
      let id;
      try {
        id = JSON.parse(data.slice(2))[1].id;
      } catch (error) {
        return;
      }
      if (typeof id !== "string") return;
      received.set(id, (received.get(id) || 0) + 1);
      acknowledge(socket, id);
    });
  }

  class PaintAckWebSocket extends Native {
    constructor(url, protocols) {
      super(url, protocols);
      if (String(url).includes("/ws/socket.io/")) watch(this);
    }
  }
  PaintAckWebSocket.__streamchatPaintAck = true;
  window.WebSocket = PaintAckWebSocket;
})();
