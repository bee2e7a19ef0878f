// Compiled by `npm run check`, never run: galopush.d.ts as a TypeScript user meets it. Each line
// is a use the README documents; a wrong or missing declaration fails the check.
import {
  Cmd,
  GalopushClient,
  GalopushError,
  decodeFrame,
  encodeFrame,
  ringXorDecode,
  ringXorEncode,
  type ClientState,
  type Framing,
  type GalopushOptions,
  type Message,
  type PushMessage,
} from '../galopush.js';

const options: GalopushOptions = {
  dispatchUrl: 'http://127.0.0.1:5150',
  uid: '13996130360',
  token: '000000',
  framing: 'compatible',
  autoAck: false,
  pingInterval: 30000,
  tls: false,
};
const client = new GalopushClient(options);
const direct = new GalopushClient({ url: 'ws://127.0.0.1:5162/ws', uid: 'u', token: '', framing: 'plain' });

const shown: string[] = [];
client.addEventListener('push', (event) => {
  const push: PushMessage = event.detail;
  const count: number = push.offline + push.flag;
  shown.push(`${push.tid} ${push.msg} ${count}`);
  const sent: boolean = client.ack(push);
  shown.push(String(sent));
});
client.addEventListener('callback', (event) => shown.push(event.detail.msg));
client.addEventListener('im', (event) => shown.push(`${event.detail.msg} ${event.detail.flag}`));
client.addEventListener('kick', (event) => shown.push(`kicked ${event.detail.reason}`));
client.addEventListener('open', (event) => shown.push(event.detail.url));
client.addEventListener('registered', (event) => shown.push(event.detail.url));
client.addEventListener('close', (event) => shown.push(`${event.detail.code} ${event.detail.reason} ${event.detail.willReconnect}`));
client.addEventListener('reconnecting', (event) => shown.push(`${event.detail.attempt} ${event.detail.delay}`));
client.addEventListener('error', (event) => {
  const error: GalopushError = event.detail;
  shown.push(`${error.code} ${error.message} ${error.status ?? ''} ${error.regresp ?? ''}`);
});
client.addEventListener('something else', (event: Event) => shown.push(event.type));

export async function run(): Promise<number> {
  const state: ClientState = client.state;
  shown.push(state);
  await client.connect();
  const code: number = await client.sendIm('text');
  client.close();
  direct.close();
  return code;
}

const framing: Framing = 'plain';
const message: Message = { cmd: Cmd.PING, tid: 1, data: {} };
const text: string = encodeFrame(message, framing);
const back: Message = decodeFrame(text);
const bytes: Uint8Array = ringXorDecode(ringXorEncode(new Uint8Array([1, 2, 3])));
const register: 1 = Cmd.REGISTER;
shown.push(`${back.cmd} ${bytes.length} ${register}`);
