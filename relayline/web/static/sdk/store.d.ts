import type { StorageLike } from "./offline_queue.js";

export interface HistoryLimits {
  maxChats: number;
  maxAgeMs: number;
  maxMessagesPerChat: number;
  maxTotalChars: number;
  maxHidden: number;
}

export declare const DEFAULT_HISTORY_LIMITS: Readonly<HistoryLimits>;

export interface HistoryRecord {
  messages: any[];
  [field: string]: any;
}

/** A bounded local copy of recent conversations (localStorage in a page). */
export declare class HistoryStore {
  constructor(options?: {
    storage?: StorageLike | null;
    prefix?: string;
    limits?: Partial<HistoryLimits>;
    now?: () => number;
  });
  limits: HistoryLimits;
  index(): Array<{ id: string; updatedAt: number; size: number }>;
  load(chatId: string): HistoryRecord | null;
  save(chatId: string, record: HistoryRecord): void;
  cleanup(): { removed: number };
  remove(chatId: string, options?: { hide?: boolean }): void;
  hidden(): string[];
}
