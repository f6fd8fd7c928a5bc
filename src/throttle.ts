/**
 * A token bucket: at most `burst` actions at once, then `perSecond`. The
 * agent reads current.conf on every change; a writer loop by the app's user
 * (300 writes of a 46 KB file in 4.4 s) pinned a core and grew the agent's
 * memory (issue 9, item 5). Normal deploys never come near the limit: an
 * edit costs two reads (the early one and the one after the quiet period).
 */
export class TokenBucket {
  readonly #burst: number;
  readonly #perMs: number;
  #tokens: number;
  #at: number;

  /** `now` in ms (the caller's clock). */
  constructor(burst: number, perSecond: number, now: number) {
    this.#burst = burst;
    this.#perMs = perSecond / 1000;
    this.#tokens = burst;
    this.#at = now;
  }

  #refill(now: number): void {
    this.#tokens = Math.min(this.#burst, this.#tokens + (now - this.#at) * this.#perMs);
    this.#at = now;
  }

  /** Take a token: 0 when one was taken, else how long to wait for the next (ms). */
  take(now: number): number {
    this.#refill(now);
    if (this.#tokens >= 1) {
      this.#tokens -= 1;
      return 0;
    }
    return Math.ceil((1 - this.#tokens) / this.#perMs);
  }

  /** Whether the bucket is full again (the burst is over). */
  full(now: number): boolean {
    this.#refill(now);
    return this.#tokens >= this.#burst;
  }
}
