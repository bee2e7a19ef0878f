// Types of galopush.js, the galopush Web terminal SDK, for TypeScript users. Written by hand
// (test/types.ts checks that they compile and read as documented; test/framing.test.js that
// they declare what the module exports).

/** The message types of SPEC §3: the `cmd` of every WebSocket message. */
export declare const Cmd: Readonly<{
  REGISTER: 1;
  REGRESP: 2;
  PING: 3;
  PONG: 4;
  PUSH: 5;
  PUSHRESP: 6;
  CALLBACK: 7;
  CBRESP: 8;
  IM: 9;
  IMRESP: 10;
  KICK: 11;
  KICKRESP: 12;
}>;

/** How JSON messages are put in WebSocket text frames (SPEC §4). */
export type Framing = 'compatible' | 'plain';

/** One WebSocket message: `{"cmd", "tid", "data"}`. */
export interface Message {
  cmd: number;
  tid: number;
  data?: Record<string, unknown> | null;
}

/** A PUSH: `offline` is the number of pushes coalesced while away (0 when live); `flag` is 1 when the user has a live Web terminal. */
export interface PushMessage {
  tid: number;
  msg: string;
  offline: number;
  flag: number;
}

/** A CALLBACK. */
export interface CallbackMessage {
  tid: number;
  msg: string;
}

/** An IM down; `flag` as in {@link PushMessage}. */
export interface ImMessage {
  tid: number;
  msg: string;
  flag: number;
}

/** A KICK: reason 1 repeated login, 2 Android/iOS exclusion, 3 session timeout, 4 logged out. */
export interface KickMessage {
  tid: number;
  reason: number;
}

/** What a connection's end reports. `willReconnect` is false when the client has stopped for good. */
export interface CloseDetail {
  code: number;
  reason: string;
  willReconnect: boolean;
}

/** A reconnection about to wait `delay` ms; `attempt` counts from 1 since the last successful REGISTER. */
export interface ReconnectingDetail {
  attempt: number;
  delay: number;
}

/** The events of a {@link GalopushClient}, each a `CustomEvent` with this `detail`. */
export interface GalopushEventMap {
  open: CustomEvent<{ url: string }>;
  registered: CustomEvent<{ url: string }>;
  push: CustomEvent<PushMessage>;
  callback: CustomEvent<CallbackMessage>;
  im: CustomEvent<ImMessage>;
  kick: CustomEvent<KickMessage>;
  close: CustomEvent<CloseDetail>;
  error: CustomEvent<GalopushError>;
  reconnecting: CustomEvent<ReconnectingDetail>;
}

/** What the client needs of a WebSocket: the browser's, Node's (22+), or the `ws` package's. */
export interface WebSocketLike {
  readonly readyState: number;
  send(data: string): void;
  close(code?: number, reason?: string): void;
  onopen: ((event: any) => void) | null;
  onmessage: ((event: any) => void) | null;
  onclose: ((event: any) => void) | null;
  onerror: ((event: any) => void) | null;
}

export interface GalopushOptions {
  /** Base URL of the router's public HTTP listener, e.g. `http://127.0.0.1:5150`: asked for a comet before every connection. */
  dispatchUrl?: string;
  /** A comet's WebSocket URL (`ws://host:port/ws`), instead of `dispatchUrl`. */
  url?: string;
  /** The user id: 1 to 32 bytes of UTF-8. */
  uid: string;
  /** The login code the business side gave this terminal: at most 32 bytes of UTF-8. */
  token: string;
  /** Default `compatible`. */
  framing?: Framing;
  /** Ack every push, callback, IM and kick once its listeners have run. Default true. */
  autoAck?: boolean;
  /** Ms between PINGs once registered. Default 30000; 0: none. */
  pingInterval?: number;
  /** Ms a PING waits for its PONG before the connection is dropped. Default 10000. */
  pongTimeout?: number;
  /** Ms the dispatcher's answer may take, and then the WebSocket handshake and REGRESP together. Default 10000. */
  connectTimeout?: number;
  /** Ms `sendIm` waits for its IMRESP. Default 10000. */
  imTimeout?: number;
  /** Ms before the first reconnection attempt, before jitter. Default 1000. */
  reconnectDelay?: number;
  /** Ms the doubling delay stops at. Default 60000. */
  maxReconnectDelay?: number;
  /** Ask the dispatcher for the comet's WSS address (`tls=1`) and connect with `wss://`. Default false. */
  tls?: boolean;
  /** The WebSocket constructor. Default `globalThis.WebSocket` (on Node 20, pass the `ws` package's). */
  WebSocket?: new (url: string) => WebSocketLike;
  /** The fetch function. Default `globalThis.fetch`. */
  fetch?: (input: string, init: RequestInit) => Promise<Response>;
}

/** Where a client is. */
export type ClientState = 'idle' | 'connecting' | 'registered' | 'reconnecting' | 'closed';

/** What failed. */
export type ErrorCode =
  | 'dispatch'
  | 'connect'
  | 'auth'
  | 'register'
  | 'timeout'
  | 'protocol'
  | 'closed'
  | 'not-registered';

/** An error the client reports: in an `error` event, or as the rejection of `connect()` or `sendIm()`. */
export declare class GalopushError extends Error {
  constructor(code: ErrorCode, message: string, info?: { status?: number; regresp?: number });
  readonly code: ErrorCode;
  /** The dispatcher's HTTP status, when it answered. */
  readonly status: number | undefined;
  /** The REGRESP code, for `auth` and `register`. */
  readonly regresp: number | undefined;
}

/** A Web terminal of one user: dispatch, connect, register, receive, ack, IM up, ping, reconnect. */
export declare class GalopushClient extends EventTarget {
  constructor(options: GalopushOptions);
  /** `idle` before `connect()`, `connecting`, `registered`, `reconnecting` (waiting to retry), `closed` for good. */
  readonly state: ClientState;
  /** Starts the client; resolves on the first successful REGISTER, rejects if it stops before one (`close()`, REGRESP 3). */
  connect(): Promise<void>;
  /** Sends an IM up; resolves with its IMRESP code (0 accepted, 1 not now). */
  sendIm(text: string): Promise<number>;
  /** Acks the `detail` of a push, callback, IM or kick event; false when acked already or its connection is gone. */
  ack(message: PushMessage | CallbackMessage | ImMessage | KickMessage): boolean;
  /** Stops for good. */
  close(): void;

  addEventListener<K extends keyof GalopushEventMap>(
    type: K,
    listener: (this: GalopushClient, event: GalopushEventMap[K]) => void,
    options?: boolean | AddEventListenerOptions,
  ): void;
  addEventListener(
    type: string,
    listener: EventListenerOrEventListenerObject | null,
    options?: boolean | AddEventListenerOptions,
  ): void;
  removeEventListener<K extends keyof GalopushEventMap>(
    type: K,
    listener: (this: GalopushClient, event: GalopushEventMap[K]) => void,
    options?: boolean | EventListenerOptions,
  ): void;
  removeEventListener(
    type: string,
    listener: EventListenerOrEventListenerObject | null,
    options?: boolean | EventListenerOptions,
  ): void;
}

/** ring-xor of SPEC §3 (a new array). */
export declare function ringXorEncode(bytes: Uint8Array): Uint8Array;
/** The inverse of {@link ringXorEncode} (a new array). */
export declare function ringXorDecode(bytes: Uint8Array): Uint8Array;
/** The text of the WebSocket message carrying `message`, in `framing`. */
export declare function encodeFrame(message: Message, framing: Framing): string;
/** The message a WebSocket text carries, in either framing; throws a `GalopushError` (`protocol`) otherwise. */
export declare function decodeFrame(text: string): Message;
