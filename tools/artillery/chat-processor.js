// Artillery processor for websocket-load-test.yml: sign a token, join a chat, ask and wait for the
// whole streamed answer. Artillery's own `send`/`match` steps see only the first frame after a send,
// and an answer is many frames (message_accepted, response_start, response_chunk..., response_end),
// so these steps read the socket themselves and report custom metrics:
//   chat.accepted_ms / chat.first_chunk_ms / chat.end_ms   (histograms, from sending the message)
//   chat.answers_complete / chat.answers_incomplete / chat.errors.<CODE>   (counters)
'use strict';

const crypto = require('node:crypto');

// scripts/run.sh's development default; set JWT_SECRET for any other gateway.
const SECRET = process.env.JWT_SECRET || 'dev-secret-change-me-in-production-0123456789';
const TIMEOUT_MS = Number(process.env.ANSWER_TIMEOUT_MS || 130000);

function b64url(value) {
  return Buffer.from(typeof value === 'string' ? value : JSON.stringify(value)).toString('base64url');
}

function signToken(userId) {
  const head = b64url({ alg: 'HS256', typ: 'JWT' });
  const body = b64url({ sub: userId, exp: Math.floor(Date.now() / 1000) + 3600 });
  const mac = crypto.createHmac('sha256', SECRET).update(`${head}.${body}`).digest('base64url');
  return `${head}.${body}.${mac}`;
}

// Resolve with the first frame `accept` returns true for; reject on close, error frame or timeout.
function waitFor(ws, onFrame) {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => finish(new Error('answer timeout')), TIMEOUT_MS);
    function finish(err, value) {
      clearTimeout(timer);
      ws.off('message', onMessage);
      ws.off('close', onClose);
      if (err) reject(err);
      else resolve(value);
    }
    function onClose(code) {
      finish(new Error(`closed ${code}`));
    }
    function onMessage(raw) {
      let frame;
      try {
        frame = JSON.parse(raw.toString());
      } catch (err) {
        return finish(err);
      }
      try {
        const verdict = onFrame(frame);
        if (verdict !== undefined) finish(null, verdict);
      } catch (err) {
        finish(err);
      }
    }
    ws.on('message', onMessage);
    ws.on('close', onClose);
  });
}

async function joinChat(context, events) {
  const userId = `artillery-${context.vars.$uuid || crypto.randomUUID()}`;
  const chatType = Math.random() < 0.5 ? 'messages' : 'documents';
  const joined = waitFor(context.ws, (frame) => {
    if (frame.type === 'chat_joined') return frame.data;
    if (frame.type === 'error') throw new Error(frame.data.code);
    return undefined;
  });
  context.ws.send(JSON.stringify({ type: 'join_chat', data: { token: signToken(userId), chatType } }));
  try {
    const data = await joined;
    context.vars.chatId = data.chatId;
    events.emit('counter', 'chat.joined', 1);
  } catch (err) {
    events.emit('counter', `chat.join_failed.${err.message}`, 1);
    throw err;
  }
}

async function askAndWaitForEnd(context, events) {
  const sent = Date.now();
  let messageId = null;
  let text = '';
  let nextSeq = 1;
  let inOrder = true;
  const done = waitFor(context.ws, (frame) => {
    const data = frame.data || {};
    switch (frame.type) {
      case 'message_accepted':
        events.emit('histogram', 'chat.accepted_ms', Date.now() - sent);
        return undefined;
      case 'response_start':
        messageId = data.messageId;
        return undefined;
      case 'response_chunk':
        if (data.messageId !== messageId) return undefined;
        if (text === '') events.emit('histogram', 'chat.first_chunk_ms', Date.now() - sent);
        inOrder = inOrder && data.seq === nextSeq;
        nextSeq += 1;
        text += data.delta;
        return undefined;
      case 'response_end':
        if (data.messageId !== messageId) return undefined;
        events.emit('histogram', 'chat.end_ms', Date.now() - sent);
        return inOrder && text === data.content ? 'complete' : 'incomplete';
      case 'error':
        return `error:${data.code}`;
      default:
        return undefined;
    }
  });
  context.ws.send(
    JSON.stringify({ type: 'send_message', data: { content: `What must a valid contract contain? (${sent})` } })
  );
  const outcome = await done;
  if (outcome === 'complete') events.emit('counter', 'chat.answers_complete', 1);
  else if (outcome === 'incomplete') events.emit('counter', 'chat.answers_incomplete', 1);
  else events.emit('counter', `chat.errors.${outcome.slice(6)}`, 1);
}

module.exports = { joinChat, askAndWaitForEnd };
