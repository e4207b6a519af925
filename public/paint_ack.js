// Tells the server when the page has painted a streamed answer's updates, so it sends the next
// update only then, with everything that arrived meanwhile (streamchat/core/paint.py). Without
// this script the server paces updates by time alone, as before.
//
// Chainlit's page talks Socket.IO over a websocket it opens after this script has run; this
// watches that websocket's incoming `stream_token` events and, once the browser has rendered
// them and painted a frame, sends `stream_painted` {id, n} on the same connection: n is how
// many stream_token events of message `id` the page has painted.
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

  function watch(socket) {
    socket.addEventListener("message", (event) => {
      const data = event.data;
      if (typeof data !== "string" || !data.startsWith(EVENT_PREFIX)) return;
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
