// relayline's JavaScript client: RelayClient (the high-level entry point) and the building
// blocks it is made of, which the relay's own web UI uses directly.

export { Api, ApiError, DEFAULT_RETRY } from "./api.js";
export { Answer, Chat, TurnCancelled, TurnFailed } from "./chat.js";
export { ConnectionStopped, RelayClient, socketUrl } from "./client.js";
export { DEFAULT_QUEUE_LIMIT, newClientMsgId, OfflineQueue, QueueFullError } from "./offline_queue.js";
export {
  CLOSE,
  CLOSE_ACTIONS,
  DEFAULT_CLOSE_ACTION,
  ERROR_CODE,
  EVENT,
  FAILURE_CATEGORY,
  FINISH_REASON,
  LIMITS,
  OP,
  RESTART_SPREAD_MS,
  TERM_EXIT_REASON,
} from "./protocol.js";
export { closeAction, DEFAULT_RECONNECT, ReconnectPolicy } from "./reconnect.js";
export { RelaySocket, SocketError } from "./socket.js";
export { DEFAULT_HISTORY_LIMITS, HistoryStore } from "./store.js";
export { Reset, Subscription } from "./subscription.js";
