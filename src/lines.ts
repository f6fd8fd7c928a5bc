/**
 * Lines of a file too large to hold: read from the end backwards, or from an
 * offset forwards, in 64 KiB chunks, as bytes (a chunk may end inside a
 * UTF-8 character; a line never does). A reader holds one chunk and one
 * line at a time; a line longer than 1 MiB is reported as one placeholder
 * line and its bytes are dropped, so memory stays bounded whatever the file
 * holds. The journal's readers (history.ts) are built on these.
 */
import type { FileHandle } from 'node:fs/promises';

export const NL = 0x0a;
const CHUNK = 64 * 1024;
/** Far above any entry the agent writes (current.conf is at most 64 KiB); a longer line is damage, and bounds a reader's memory. */
const MAX_LINE = 1024 * 1024;

export interface RawLine {
  readonly bytes: Buffer;
  /** Byte offset of the line's first byte in its file. */
  readonly offset: number;
  /** Byte offset where the next line starts. */
  readonly next: number;
  /** false for a last line without its newline (cut short by a crash, or still being written). */
  readonly terminated: boolean;
}

const OVERLONG = Buffer.from('(a line over 1 MiB)');

/** Lines of an open file from its end (as it was at `size`) to its start, in CHUNK reads. */
export async function* linesBackward(handle: FileHandle, size: number): AsyncGenerator<RawLine> {
  let pos = size;
  // The bytes after `pos` not yielded yet: the end part of a line whose start is further back.
  let carry: Buffer = Buffer.alloc(0);
  // Whether a newline was seen after the carry (false only for the file's unterminated tail).
  let closed = false;
  // Inside a line already reported as overlong.
  let dropping = false;
  while (pos > 0) {
    const n = Math.min(CHUNK, pos);
    pos -= n;
    const buf = Buffer.alloc(n);
    await readFully(handle, buf, pos);
    const data = carry.length === 0 ? buf : Buffer.concat([buf, carry]);
    let end = data.length;
    for (let j = data.lastIndexOf(NL, end - 1); j >= 0; j = end > 0 ? data.lastIndexOf(NL, end - 1) : -1) {
      if (dropping) dropping = false;
      else if (end > j + 1) yield { bytes: data.subarray(j + 1, end), offset: pos + j + 1, next: pos + end + (closed ? 1 : 0), terminated: closed };
      closed = true;
      end = j;
    }
    carry = Buffer.from(data.subarray(0, end));
    if (!dropping && carry.length > MAX_LINE) {
      yield { bytes: OVERLONG, offset: pos, next: pos + carry.length, terminated: true };
      dropping = true;
    }
    if (dropping) carry = Buffer.alloc(0);
  }
  if (carry.length > 0 && !dropping) yield { bytes: carry, offset: 0, next: carry.length + (closed ? 1 : 0), terminated: closed };
}

/** Lines of an open file from `from` to its end (as it was at `size`), in CHUNK reads. */
export async function* linesForward(handle: FileHandle, from: number, size: number): AsyncGenerator<RawLine> {
  let pos = from;
  let carry: Buffer = Buffer.alloc(0);
  let carryAt = from;
  let dropping = false;
  while (pos < size) {
    const n = Math.min(CHUNK, size - pos);
    const buf = Buffer.alloc(n);
    await readFully(handle, buf, pos);
    pos += n;
    const data = carry.length === 0 ? buf : Buffer.concat([carry, buf]);
    let start = 0;
    for (let j = data.indexOf(NL); j >= 0; j = data.indexOf(NL, start)) {
      if (dropping) dropping = false;
      else yield { bytes: data.subarray(start, j), offset: carryAt + start, next: carryAt + j + 1, terminated: true };
      start = j + 1;
    }
    carryAt += start;
    carry = Buffer.from(data.subarray(start));
    if (!dropping && carry.length > MAX_LINE) {
      yield { bytes: OVERLONG, offset: carryAt, next: carryAt + carry.length, terminated: true };
      dropping = true;
    }
    if (dropping) {
      carryAt += carry.length;
      carry = Buffer.alloc(0);
    }
  }
  if (carry.length > 0 && !dropping) yield { bytes: carry, offset: carryAt, next: carryAt + carry.length, terminated: false };
}

async function readFully(handle: FileHandle, buf: Buffer, position: number): Promise<void> {
  let done = 0;
  while (done < buf.length) {
    const { bytesRead } = await handle.read(buf, done, buf.length - done, position + done);
    if (bytesRead === 0) throw new Error(`the journal shrank while it was read (at byte ${position + done})`);
    done += bytesRead;
  }
}

/** 1-based number of the line starting at `offset`: counted only when a damaged line is reported. */
export async function lineNumberAt(handle: FileHandle, offset: number): Promise<number> {
  let count = 1;
  const buf = Buffer.alloc(CHUNK);
  for (let pos = 0; pos < offset;) {
    const { bytesRead } = await handle.read(buf, 0, Math.min(CHUNK, offset - pos), pos);
    if (bytesRead === 0) break;
    for (let j = buf.indexOf(NL); j >= 0 && j < bytesRead; j = buf.indexOf(NL, j + 1)) count++;
    pos += bytesRead;
  }
  return count;
}
