// The chat page: one WebSocket to /ws/chat, the protocol of docs/asyncapi.json, no build step.
// Reconnects with jittered exponential backoff and rejoins the open chat; renews development tokens
// before they expire (refresh_token); shows the gateway's errors as a person would read them.
(() => {
  "use strict";

  const $ = (id) => document.getElementById(id);
  const el = {
    status: $("status"), who: $("who"), signOut: $("sign-out"), signIn: $("sign-in"), app: $("app"),
    devForm: $("dev-form"), userId: $("user-id"), tokenForm: $("token-form"), token: $("token"),
    signInError: $("sign-in-error"), chats: $("chats"), chatType: $("chat-type"), chatTitle: $("chat-title"),
    messages: $("messages"), notice: $("notice"), composer: $("composer"), input: $("input"),
    send: $("send"), stop: $("stop"),
  };
  const wsUrl = `${location.protocol === "https:" ? "wss" : "ws"}://${location.host}/ws/chat`;
  const TYPE_LABEL = { messages: "Legal question", documents: "Documents" };

  const state = {
    token: null, tokenFromDev: false, userId: null, ws: null, signedIn: false,
    chatId: null, chatType: "messages", chats: [], nextRequestId: 1, attempt: 0,
    reconnectTimer: null, refreshTimer: null, retryUntil: 0, retryTimer: null,
    answers: new Map(), // assistant messageId -> bubble
    pendingQuestions: [], // user bubbles waiting for their message_accepted
    streaming: 0,
  };

  // ------------------------------------------------------------------ sign in

  el.devForm.addEventListener("submit", async (event) => {
    event.preventDefault();
    hide(el.signInError);
    try {
      await fetchDevToken(el.userId.value.trim());
      start();
    } catch (err) {
      show(el.signInError, err.message);
    }
  });

  el.tokenForm.addEventListener("submit", (event) => {
    event.preventDefault();
    const token = el.token.value.trim();
    if (!token) return;
    state.token = token;
    state.tokenFromDev = false;
    state.userId = jwtClaims(token).sub || "?";
    start();
  });

  el.signOut.addEventListener("click", () => {
    state.signedIn = false;
    clearTimeout(state.reconnectTimer);
    clearTimeout(state.refreshTimer);
    if (state.ws) state.ws.close(1000, "sign out");
    state.token = null;
    state.chatId = null;
    el.app.hidden = true;
    el.signIn.hidden = false;
    el.signOut.hidden = true;
    el.who.textContent = "";
    setStatus("offline");
  });

  async function fetchDevToken(userId) {
    const response = await fetch("/api/dev/token", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ userId }),
    });
    if (response.status === 404) {
      throw new Error("Development tokens are turned off on this server: paste a token instead.");
    }
    const body = await response.json().catch(() => ({}));
    if (!response.ok) throw new Error(body.error || `Could not get a token (HTTP ${response.status}).`);
    state.token = body.token;
    state.tokenFromDev = true;
    state.userId = body.userId;
  }

  function start() {
    state.signedIn = true;
    state.attempt = 0;
    el.signIn.hidden = true;
    el.app.hidden = false;
    el.signOut.hidden = false;
    el.who.textContent = state.userId;
    connect();
  }

  // ------------------------------------------------------------------ connection

  function connect() {
    clearTimeout(state.reconnectTimer);
    setStatus("connecting");
    const ws = new WebSocket(wsUrl);
    state.ws = ws;
    ws.onopen = () => {
      const data = { token: state.token, chatType: state.chatType };
      if (state.chatId) data.chatId = state.chatId;
      send("join_chat", data);
    };
    ws.onmessage = (event) => {
      let frame;
      try { frame = JSON.parse(event.data); } catch { return; }
      handle(frame);
    };
    ws.onclose = (event) => {
      if (state.ws !== ws) return;
      state.ws = null;
      setStatus("offline");
      endStreaming("interrupted");
      if (!state.signedIn) return;
      if (event.code === 1008 && !state.tokenFromDev && state.lastError === "UNAUTHORIZED") {
        notice("Your session has ended. Sign in again.", "bad");
        return;
      }
      scheduleReconnect();
    };
  }

  function scheduleReconnect() {
    // full jitter: a crowd of tabs that lost the same gateway does not come back at once
    const ceiling = Math.min(15000, 500 * 2 ** state.attempt);
    const delay = Math.round(Math.random() * ceiling);
    state.attempt += 1;
    setStatus("connecting", `reconnecting in ${Math.ceil(delay / 1000)} s`);
    state.reconnectTimer = setTimeout(async () => {
      if (state.tokenFromDev && tokenSecondsLeft() < 60) {
        try { await fetchDevToken(state.userId); } catch { /* the join will say UNAUTHORIZED */ }
      }
      connect();
    }, delay);
  }

  function send(type, data, requestId) {
    if (!state.ws || state.ws.readyState !== WebSocket.OPEN) return false;
    const frame = { type, data };
    if (requestId !== undefined) frame.requestId = requestId;
    state.ws.send(JSON.stringify(frame));
    return true;
  }

  // ------------------------------------------------------------------ frames

  function handle(frame) {
    const data = frame.data || {};
    switch (frame.type) {
      case "chat_joined":
        state.attempt = 0;
        state.lastError = null;
        setStatus("online");
        hideNotice();
        enterChat(data, data.history);
        scheduleRefresh();
        send("list_chats", {});
        break;
      case "chat_switched":
        enterChat(data, data.history);
        break;
      case "chat_created":
        enterChat(data, []);
        send("list_chats", {});
        break;
      case "chats":
        state.chats = data.chats || [];
        renderChats();
        break;
      case "message_accepted": {
        const bubble = state.pendingQuestions.shift();
        if (bubble) bubble.dataset.id = data.messageId;
        break;
      }
      case "response_start":
        startAnswer(data.messageId);
        break;
      case "response_chunk": {
        const bubble = state.answers.get(data.messageId) || startAnswer(data.messageId);
        bubble.querySelector(".text").textContent += data.delta;
        bubble.dataset.chunks = String(Number(bubble.dataset.chunks || 0) + 1);
        scrollDown();
        break;
      }
      case "response_end": {
        const bubble = state.answers.get(data.messageId) || startAnswer(data.messageId);
        bubble.querySelector(".text").textContent = data.content;
        finishAnswer(bubble, data.finishReason === "cancelled" ? "cancelled" : "done",
          data.finishReason === "cancelled" ? "stopped" : "");
        send("list_chats", {});
        break;
      }
      case "token_refreshed":
        scheduleRefresh(data.expiresAt);
        break;
      case "error":
        showError(data);
        break;
      default:
        break;
    }
  }

  function enterChat(data, history) {
    state.chatId = data.chatId;
    state.chatType = data.chatType;
    state.answers.clear();
    state.pendingQuestions = [];
    state.streaming = 0;
    updateComposer();
    el.chatType.textContent = TYPE_LABEL[data.chatType] || data.chatType;
    el.chatType.className = `badge ${data.chatType}`;
    const known = state.chats.find((c) => c.chatId === data.chatId);
    el.chatTitle.textContent = (known && known.title) || "New chat";
    el.messages.replaceChildren();
    for (const message of history || []) {
      const bubble = addBubble(message.role, message.content);
      bubble.dataset.id = message.id;
      if (message.role === "assistant") {
        bubble.dataset.state = message.status === "cancelled" ? "cancelled" : message.status === "failed" ? "failed" : "done";
        if (message.status === "cancelled") addTail(bubble, "stopped");
      }
    }
    if (!el.messages.children.length) {
      const empty = document.createElement("p");
      empty.className = "empty";
      empty.textContent = data.chatType === "documents"
        ? "Paste a clause or describe the document you are drafting or reviewing."
        : "Ask a legal question to start.";
      el.messages.append(empty);
    }
    renderChats();
    el.input.focus();
  }

  function startAnswer(messageId) {
    let bubble = state.answers.get(messageId);
    if (bubble) return bubble;
    bubble = addBubble("assistant", "");
    bubble.dataset.id = messageId;
    bubble.dataset.state = "streaming";
    bubble.dataset.chunks = "0";
    state.answers.set(messageId, bubble);
    state.streaming += 1;
    updateComposer();
    return bubble;
  }

  function finishAnswer(bubble, final, tail) {
    if (bubble.dataset.state === "streaming") state.streaming = Math.max(0, state.streaming - 1);
    bubble.dataset.state = final;
    if (tail) addTail(bubble, tail);
    updateComposer();
  }

  function endStreaming(reason) {
    for (const bubble of state.answers.values()) {
      if (bubble.dataset.state === "streaming") finishAnswer(bubble, "failed", reason);
    }
  }

  // ------------------------------------------------------------------ errors as a person reads them

  function showError(data) {
    state.lastError = data.code;
    const seconds = Math.ceil((data.retryAfterMs || 0) / 1000);
    const bubble = data.messageId && (state.answers.get(data.messageId) ||
      el.messages.querySelector(`[data-id="${CSS.escape(data.messageId)}"]`));
    switch (data.code) {
      case "RATE_LIMITED":
        el.input.value = el.input.value || lastQuestion();
        dropUnanswered();
        waitThenAllow(data.retryAfterMs, (s) => `You are sending messages too quickly. You can send again in ${s} s.`);
        return;
      case "BUSY":
        dropUnanswered();
        waitThenAllow(data.retryAfterMs, (s) => `The assistant is busy right now. Try again in ${s} s.`);
        return;
      case "SERVER_AT_CAPACITY":
        notice("The server is full right now. We will reconnect you automatically.", "bad");
        return;
      case "TOO_MANY_CONNECTIONS":
        notice("You have too many chat windows open. Close one; we keep trying to reconnect.", "bad");
        return;
      case "UNAUTHORIZED":
        notice(state.tokenFromDev ? "Your session expired; getting a new one…" : "Your session has ended. Sign in again.", "bad");
        return;
      case "MESSAGE_TOO_LONG":
        el.input.value = el.input.value || lastQuestion();
        dropUnanswered();
        notice(`${data.message}. Shorten it and send again.`, "bad");
        return;
      case "CHAT_NOT_FOUND":
        notice("That chat does not exist or is not yours.", "bad");
        return;
      case "UPSTREAM_ERROR":
      case "TIMEOUT":
      case "INTERNAL":
      default:
        if (bubble && bubble.classList.contains("assistant")) {
          finishAnswer(bubble, "failed", humanError(data));
        } else {
          notice(humanError(data) + (seconds ? ` Try again in ${seconds} s.` : ""), "bad");
        }
    }
  }

  function humanError(data) {
    if (data.code === "UPSTREAM_ERROR") return "The assistant could not answer. Please try again.";
    if (data.code === "TIMEOUT") return "The answer took too long. Please try again.";
    return data.message || "Something went wrong.";
  }

  function waitThenAllow(ms, text) {
    state.retryUntil = Date.now() + (ms || 1000);
    clearInterval(state.retryTimer);
    const tick = () => {
      const left = Math.ceil((state.retryUntil - Date.now()) / 1000);
      if (left <= 0) {
        clearInterval(state.retryTimer);
        state.retryUntil = 0;
        hideNotice();
      } else {
        notice(text(left), "warn");
      }
      updateComposer();
    };
    tick();
    state.retryTimer = setInterval(tick, 250);
  }

  function lastQuestion() {
    const bubble = state.pendingQuestions[state.pendingQuestions.length - 1];
    return bubble ? bubble.querySelector(".text").textContent : "";
  }

  function dropUnanswered() {
    const bubble = state.pendingQuestions.pop();
    if (bubble) bubble.remove();
  }

  // ------------------------------------------------------------------ composer and chats

  el.composer.addEventListener("submit", (event) => {
    event.preventDefault();
    const content = el.input.value.trim();
    if (!content || sendBlocked()) return;
    if (!send("send_message", { content }, state.nextRequestId++)) {
      notice("Not connected yet; your message was not sent.", "bad");
      return;
    }
    el.messages.querySelector(".empty")?.remove();
    state.pendingQuestions.push(addBubble("user", content));
    el.input.value = "";
    hideNotice();
  });

  el.input.addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey) {
      event.preventDefault();
      el.composer.requestSubmit();
    }
  });

  el.stop.addEventListener("click", () => {
    for (const [messageId, bubble] of state.answers) {
      if (bubble.dataset.state === "streaming") send("cancel", { messageId });
    }
  });

  for (const button of [$("new-messages"), $("new-documents")]) {
    button.addEventListener("click", () => send("create_chat", { chatType: button.dataset.type }, state.nextRequestId++));
  }

  function renderChats() {
    const items = state.chats.map((chat) => {
      const li = document.createElement("li");
      if (chat.chatId === state.chatId) li.className = "active";
      const button = document.createElement("button");
      button.type = "button";
      button.dataset.chatId = chat.chatId;
      const title = document.createElement("span");
      title.className = "title";
      title.textContent = chat.title || "New chat";
      const meta = document.createElement("span");
      meta.className = "meta";
      meta.textContent = `${TYPE_LABEL[chat.chatType] || chat.chatType} · ${new Date(chat.updatedAt).toLocaleString()}`;
      button.append(title, meta);
      button.addEventListener("click", () => {
        if (chat.chatId !== state.chatId) send("switch_chat", { chatId: chat.chatId, chatType: chat.chatType }, state.nextRequestId++);
      });
      li.append(button);
      return li;
    });
    el.chats.replaceChildren(...items);
    const current = state.chats.find((c) => c.chatId === state.chatId);
    if (current && current.title) el.chatTitle.textContent = current.title;
  }

  function sendBlocked() {
    return state.retryUntil > Date.now() || !state.ws || state.ws.readyState !== WebSocket.OPEN;
  }

  function updateComposer() {
    el.send.disabled = state.retryUntil > Date.now();
    el.stop.hidden = state.streaming === 0;
  }

  // ------------------------------------------------------------------ tokens

  function jwtClaims(token) {
    try {
      const part = token.split(".")[1].replace(/-/g, "+").replace(/_/g, "/");
      return JSON.parse(atob(part + "=".repeat((4 - (part.length % 4)) % 4)));
    } catch {
      return {};
    }
  }

  function tokenSecondsLeft() {
    const exp = jwtClaims(state.token || "").exp;
    return exp ? exp - Date.now() / 1000 : Infinity;
  }

  function scheduleRefresh() {
    clearTimeout(state.refreshTimer);
    if (!state.tokenFromDev) return; // a pasted token cannot be renewed from here
    const left = tokenSecondsLeft();
    if (!Number.isFinite(left)) return;
    const delay = Math.max(1, left - Math.min(60, left / 2)) * 1000;
    state.refreshTimer = setTimeout(async () => {
      try {
        await fetchDevToken(state.userId);
        send("refresh_token", { token: state.token }, state.nextRequestId++);
      } catch {
        scheduleRefresh();
      }
    }, delay);
  }

  // ------------------------------------------------------------------ little helpers

  function addBubble(role, text) {
    const bubble = document.createElement("div");
    bubble.className = `msg ${role}`;
    const who = document.createElement("span");
    who.className = "who";
    who.textContent = role === "user" ? "You" : "Assistant";
    const body = document.createElement("span");
    body.className = "text";
    body.textContent = text;
    bubble.append(who, body);
    el.messages.append(bubble);
    scrollDown();
    return bubble;
  }

  function addTail(bubble, text) {
    const tail = document.createElement("span");
    tail.className = "tail";
    tail.textContent = text;
    bubble.append(tail);
  }

  function scrollDown() { el.messages.scrollTop = el.messages.scrollHeight; }
  function show(node, text) { node.textContent = text; node.hidden = false; }
  function hide(node) { node.hidden = true; }
  function notice(text, kind) { el.notice.dataset.kind = kind; show(el.notice, text); }
  function hideNotice() { hide(el.notice); }
  function setStatus(value, text) { el.status.dataset.state = value; el.status.textContent = text || value; }
})();
