// The original document's JavaScript snippets, runnable against a gateway:
//
//   node examples/spec-examples.mjs                                   Node 22+ (global WebSocket)
//   node --experimental-websocket examples/spec-examples.mjs          Node 20.10+ and 21
//   python3 scripts/fetch-ws.py && node examples/spec-examples.mjs    Node 18 (Debian 12), Node 20 < 20.10
//
// Environment: GATEWAY_URL (default ws://localhost:3000/ws/chat), CHAT_TOKEN (default: one from the
// gateway's development endpoint, which scripts/run.sh turns on). Uses the global WebSocket, or, where
// there is none, the `ws` package pinned in examples/package-lock.json (installed in examples/node_modules
// by scripts/fetch-ws.py without npm, or by `npm ci --prefix examples`).
//
// It runs the three frames of the original exactly as written there, with real ids in place of the
// placeholders: join_chat (a messages chat, then again later with chatId), create_chat, switch_chat,
// and sends a message whose answer streams to stdout.

const url = process.env.GATEWAY_URL ?? 'ws://localhost:3000/ws/chat';
const WebSocketImpl = globalThis.WebSocket ?? await import('ws').then((module) => module.default, (error) => {
  if (error.code !== 'ERR_MODULE_NOT_FOUND') throw error;
  throw new Error(`Node ${process.version} has no global WebSocket and the ws package is not installed: run `
    + '`python3 scripts/fetch-ws.py` (or `npm ci --prefix examples`), or use Node 22+ '
    + '(Node 20.10+: node --experimental-websocket)');
});

async function devToken() {
  const httpUrl = url.replace(/^ws/, 'http').replace(/\/ws\/chat$/, '');
  const response = await fetch(`${httpUrl}/api/dev/token`, {
    method: 'POST', headers: {'Content-Type': 'application/json'}, body: JSON.stringify({userId: 'js-example'}),
  });
  if (!response.ok) throw new Error(`no CHAT_TOKEN and no development token (HTTP ${response.status})`);
  return (await response.json()).token;
}

// One connection as a sequence of awaited frames: resolve on the frame type we wait for.
function open(address) {
  const ws = new WebSocketImpl(address);
  const queue = [];
  let waiting = null;
  ws.onmessage = (event) => {
    const frame = JSON.parse(event.data);
    if (frame.type === 'response_chunk') process.stdout.write(frame.data.delta);
    if (waiting && waiting.types.includes(frame.type)) { const w = waiting; waiting = null; w.resolve(frame); }
    else queue.push(frame);
  };
  const next = (...types) => new Promise((resolve, reject) => {
    const index = queue.findIndex((f) => types.includes(f.type));
    if (index >= 0) return resolve(queue.splice(index, 1)[0]);
    waiting = {types, resolve};
    setTimeout(() => reject(new Error(`no ${types.join('/')} within 20 s`)), 20000).unref?.();
  });
  const ready = new Promise((resolve, reject) => { ws.onopen = resolve; ws.onerror = reject; });
  return {ws, next, ready};
}

function expect(frame, type) {
  if (frame.type !== type) throw new Error(`expected ${type}, got ${JSON.stringify(frame)}`);
  return frame.data;
}

const token = process.env.CHAT_TOKEN ?? await devToken();

// --- first connection: join a new messages chat, create a documents chat, ask, switch back
const first = open(url);
await first.ready;
let ws = first.ws;
ws.send(JSON.stringify({type: 'join_chat', data: {token: token, chatType: 'messages'}}));
const messagesChat = expect(await first.next('chat_joined', 'error'), 'chat_joined').chatId;
console.log(`joined messages chat ${messagesChat}`);

ws.send(JSON.stringify({type: 'create_chat', data: {chatType: 'documents'}}));
const documentsChat = expect(await first.next('chat_created', 'error'), 'chat_created').chatId;
console.log(`created documents chat ${documentsChat}`);

ws.send(JSON.stringify({type: 'send_message', data: {content: 'Review my NDA'}}));
const end = expect(await first.next('response_end', 'error'), 'response_end');
console.log(`\n[answer ${end.messageId}: ${end.finishReason}]`);

ws.send(JSON.stringify({type: 'switch_chat', data: {chatId: messagesChat, chatType: 'messages'}}));
expect(await first.next('chat_switched', 'error'), 'chat_switched');
console.log(`switched to messages chat ${messagesChat}`);
ws.close();

// --- second connection: join the existing documents chat; its history holds the conversation
const second = open(url);
await second.ready;
ws = second.ws;
ws.send(JSON.stringify({type: 'join_chat', data: {token: token, chatType: 'documents', chatId: documentsChat}}));
const joined = expect(await second.next('chat_joined', 'error'), 'chat_joined');
console.log(`rejoined documents chat ${joined.chatId} with ${joined.history.length} messages`);
ws.close();
