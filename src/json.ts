/**
 * One reader for the JSON files people write by hand: current.conf and the
 * agent config (and `stripBom` for every other JSON file relink reads back).
 *
 * Why not JSON.parse alone:
 * - a UTF-8 byte order mark, which editors on Windows save, makes it fail
 *   with "Unexpected token" around an invisible character; RFC 8259 §8.1
 *   lets a parser ignore one, so it is dropped here;
 * - it takes the last of two equal keys silently (`"bin.file"` twice);
 * - its error message quotes a snippet of the text, and current.conf may be
 *   a symlink to a file only root may read: that snippet would end up in a
 *   journal everybody can read.
 *
 * JSON.parse builds the value (exact about numbers and escapes, and native:
 * the agent runs its own JavaScript in V8's interpreter). A scanner, written
 * for this, is the judge of the rest: when JSON.parse refuses the text, the
 * scanner finds the first error and says where (line, column), what was
 * expected and the kind of character found, never the text itself (Node 20's
 * JSON.parse gives the position only inside its message); when the value
 * has fewer members than the text has keys, the scanner names every
 * duplicated key, at every object depth, with its places. The scanner and
 * JSON.parse agree on what is JSON (test/json.test.ts checks a corpus).
 */
import { fileError, RelinkErrors, type ErrorCode, type RelinkError } from './errors.js';

const BOM = 0xfeff;

/** `text` without a leading UTF-8 byte order mark (U+FEFF), which RFC 8259 §8.1 lets a parser ignore. */
export function stripBom(text: string): string {
  return text.charCodeAt(0) === BOM ? text.slice(1) : text;
}

/** `["apps", 0, "reload", "signal"]` -> `apps[0].reload.signal`; a dotted key stays whole. */
export function keyPath(path: readonly PropertyKey[]): string {
  let out = '';
  for (const part of path) {
    if (typeof part === 'number') out += `[${part}]`;
    else out += out === '' ? String(part) : `.${String(part)}`;
  }
  return out;
}

/** 1-based line and column (in characters) of a place in the text, after the byte order mark. */
export interface JsonPosition {
  readonly line: number;
  readonly column: number;
}

/** The first syntax error: where, what was expected there, and what kind of character was found (never the text). */
export class JsonSyntaxError extends Error {
  readonly line: number;
  readonly column: number;
  readonly expected: string;
  readonly found: string;
  constructor(at: JsonPosition, expected: string, found: string) {
    super(`expected ${expected} at line ${at.line}, column ${at.column} (found: ${found})`);
    this.name = 'JsonSyntaxError';
    this.line = at.line;
    this.column = at.column;
    this.expected = expected;
    this.found = found;
  }
}

/** How many places of one duplicated key are located (a message lists these). */
const MAX_PLACES = 3;

/** A key that appears more than once in one object: its path (`apps[0].reload.signal`), how often, and its first places. */
export interface DuplicateKey {
  readonly key: string;
  readonly count: number;
  /** The first (at most 3) places it appears. */
  readonly at: readonly JsonPosition[];
}

export interface ParsedJson {
  readonly value: unknown;
  readonly duplicates: readonly DuplicateKey[];
}

/**
 * Parse `text` (a leading byte order mark ignored, any line ends). Throws
 * JsonSyntaxError at the first syntax error, an empty text included; returns
 * the value (as JSON.parse builds it) and every duplicated key.
 */
export function parseJson(text: string): ParsedJson {
  const body = stripBom(text);
  let value: unknown;
  try {
    value = JSON.parse(body);
  } catch {
    scanJson(body);
    // Not reached while the scanner and JSON.parse agree (test/json.test.ts); V8's own message would quote the text.
    throw new JsonSyntaxError({ line: 1, column: 1 }, 'valid JSON', 'text that JSON.parse refuses');
  }
  // Fast path, the usual case: as many members in the value as key separators
  // in the text means no key was dropped. It is mostly native code (JSON.parse,
  // a regular expression): a 68 KB document took about 8 ms under the agent's
  // --no-opt flags, the scanner about 20 ms (2 shared cores, noisy).
  if (members(value) === keySeparators(body)) return { value, duplicates: [] };
  return { value, duplicates: scanJson(body) };
}

/**
 * Check `text`'s syntax (RFC 8259, no byte order mark: see stripBom) without
 * building its value. Throws JsonSyntaxError at the first error; returns the
 * duplicated keys, each with its first (at most 3) places.
 */
export function scanJson(text: string): DuplicateKey[] {
  const found = scan(text);
  const places = positionsOf(text, found.flatMap((d) => d.offsets.slice(0, MAX_PLACES)));
  return found.map((d) => ({ key: keyPath(d.path), count: d.offsets.length, at: d.offsets.slice(0, MAX_PLACES).map((o) => places.get(o)!) }));
}

/** Members of every object in a parsed value (a stack, not recursion: JSON.parse takes any depth). */
function members(value: unknown): number {
  let n = 0;
  const todo: unknown[] = [value];
  while (todo.length > 0) {
    const v = todo.pop();
    if (v === null || typeof v !== 'object') continue;
    if (Array.isArray(v)) {
      for (const x of v) todo.push(x);
      continue;
    }
    for (const x of Object.values(v)) {
      n++;
      todo.push(x);
    }
  }
  return n;
}

/** In valid JSON, a string is where a quote starts outside another, and every ":" outside strings follows a key. */
const STRINGS = /"(?:[^"\\]|\\.)*"/g;

function keySeparators(json: string): number {
  return json.replace(STRINGS, '').split(':').length - 1;
}

/**
 * Parse a hand-written JSON file's text, refusing a syntax error (code
 * `codes.syntax`, rule "must be valid JSON: expected X at line L, column C",
 * found the kind of character) and duplicate keys (code `codes.duplicate`,
 * one problem per key, naming its path and places). No message quotes the text.
 * Throws RelinkErrors; returns the value.
 */
export function parseJsonFile(text: string, file: string, codes: { readonly syntax: ErrorCode; readonly duplicate: ErrorCode }): unknown {
  let parsed: ParsedJson;
  try {
    parsed = parseJson(text);
  } catch (err) {
    if (!(err instanceof JsonSyntaxError)) throw err;
    if (isBlank(stripBom(text))) throw new RelinkErrors([fileError(codes.syntax, file, undefined, 'must be valid JSON', 'an empty file')]);
    throw new RelinkErrors([fileError(codes.syntax, file, undefined, `must be valid JSON: expected ${err.expected} at line ${err.line}, column ${err.column}`, err.found)]);
  }
  if (parsed.duplicates.length > 0) {
    throw new RelinkErrors(parsed.duplicates.map((d): RelinkError => {
      const places = d.at.map(where).join('; ') + (d.count > d.at.length ? `; and ${d.count - d.at.length} more` : '');
      return fileError(codes.duplicate, file, d.key, 'must appear only once in its object (otherwise the last one would silently win)', `${d.count} times: ${places}`);
    }));
  }
  return parsed.value;
}

function where(p: JsonPosition): string {
  return `line ${p.line}, column ${p.column}`;
}

function isBlank(text: string): boolean {
  for (let i = 0; i < text.length; i++) if (!isWs(text.charCodeAt(i))) return false;
  return true;
}

// --- the scanner -------------------------------------------------------------

const isWs = (c: number): boolean => c === 0x20 || c === 0x0a || c === 0x0d || c === 0x09;

// Whole tokens by sticky regular expressions: the agent runs JavaScript in
// V8's interpreter (--no-opt --no-sparkplug, src/cli/main.ts), where a loop
// over each character scanned a 68 KB document in about 30 ms, and with
// these, which the regexp engine runs natively, in about 20 ms. A token that
// does not match is walked character by character to say where and why.
const WS = /[ \t\n\r]*/y;
const STRING = /"(?:[^"\\\u0000-\u001f]|\\["\\/bfnrt]|\\u[0-9A-Fa-f]{4})*"/y;
const NUMBER = /-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?/y;
const isDigit = (c: number): boolean => c >= 0x30 && c <= 0x39;

/** One open object or array; the stack of them is explicit so no nesting depth can overflow the call stack. */
interface Frame {
  readonly object: boolean;
  /** Object: each key's offsets; array: unused. */
  readonly keys: Map<string, number[]> | undefined;
  /** Object: the current member's key; array: the current element's index. */
  at: string | number;
}

/** Checks the grammar of RFC 8259; returns each duplicated key's path and offsets. Throws JsonSyntaxError. */
function scan(text: string): Array<{ path: PropertyKey[]; offsets: number[] }> {
  const n = text.length;
  const stack: Frame[] = [];
  const dups: Array<{ path: PropertyKey[]; offsets: number[] }> = [];
  const fail = (i: number, expected: string): never => {
    throw new JsonSyntaxError(positionOf(text, i), expected, describeAt(text, i));
  };
  const ws = (i: number): number => {
    WS.lastIndex = i;
    WS.test(text);
    return WS.lastIndex;
  };

  // Returns the offset after the string's closing quote.
  const string = (i: number): number => {
    STRING.lastIndex = i;
    if (STRING.test(text)) return STRING.lastIndex;
    // Not a valid string: walk it to say where and why.
    let j = i + 1;
    for (;;) {
      if (j >= n) fail(j, 'a closing double quote');
      const c = text.charCodeAt(j);
      if (c === 0x22) return j + 1;
      if (c < 0x20) fail(j, 'a closing double quote, or an escape such as \\n for a line break or \\t for a tab');
      if (c === 0x5c) {
        const e = text.charCodeAt(j + 1);
        if (e === 0x75) {
          for (let k = j + 2; k < j + 6; k++) if (!/[0-9A-Fa-f]/.test(text[k] ?? '')) fail(k, 'four hex digits after \\u');
          j += 6;
        } else if ('"\\/bfnrt'.includes(text[j + 1] ?? 'x')) {
          j += 2;
        } else {
          fail(j + 1, 'an escape: \\" \\\\ \\/ \\b \\f \\n \\r \\t or \\uXXXX');
        }
        continue;
      }
      j++;
    }
  };

  const digits = (i: number, expected: string): number => {
    if (!isDigit(text.charCodeAt(i))) fail(i, expected);
    while (isDigit(text.charCodeAt(i))) i++;
    return i;
  };

  const number = (i: number): number => {
    NUMBER.lastIndex = i;
    if (NUMBER.test(text) && !/[0-9.eE+-]/.test(text[NUMBER.lastIndex] ?? '')) return NUMBER.lastIndex;
    // Not a valid number, or one followed by what would continue it: walk it to say where and why.
    if (text.charCodeAt(i) === 0x2d) i++;
    if (text.charCodeAt(i) === 0x30) {
      i++;
      if (isDigit(text.charCodeAt(i))) fail(i, '".", "e" or the end of the number (a number does not start with 0)');
    } else {
      i = digits(i, 'a digit');
    }
    if (text.charCodeAt(i) === 0x2e) i = digits(i + 1, 'a digit after the decimal point');
    if (text.charCodeAt(i) === 0x65 || text.charCodeAt(i) === 0x45) {
      i++;
      if (text.charCodeAt(i) === 0x2b || text.charCodeAt(i) === 0x2d) i++;
      i = digits(i, 'a digit in the exponent');
    }
    return i;
  };

  const literal = (i: number, word: string): number => {
    for (let k = 0; k < word.length; k++) if (text[i + k] !== word[k]) fail(i + k, JSON.stringify(word));
    return i + word.length;
  };

  const key = (i: number, first: boolean): number => {
    if (text.charCodeAt(i) !== 0x22) {
      if (!first && text.charCodeAt(i) === 0x7d) fail(i, 'a key in double quotes (JSON allows no comma before "}")');
      fail(i, first ? 'a key in double quotes, or "}"' : 'a key in double quotes');
    }
    const end = string(i);
    const raw = text.slice(i + 1, end - 1);
    const name = raw.includes('\\') ? (JSON.parse(text.slice(i, end)) as string) : raw;
    const frame = stack[stack.length - 1]!;
    const seen = frame.keys!.get(name);
    if (seen === undefined) {
      frame.keys!.set(name, [i]);
    } else {
      seen.push(i);
      if (seen.length === 2) dups.push({ path: [...stack.map((f) => f.at).slice(0, -1), name], offsets: seen });
    }
    frame.at = name;
    const colon = ws(end);
    if (text.charCodeAt(colon) !== 0x3a) fail(colon, '":" after the key');
    return ws(colon + 1);
  };

  let i = ws(0);
  // Each turn reads one value at i, then closes every container that ends after it.
  for (;;) {
    const c = text.charCodeAt(i);
    if (c === 0x7b) {
      stack.push({ object: true, keys: new Map(), at: '' });
      i = ws(i + 1);
      if (text.charCodeAt(i) !== 0x7d) {
        i = key(i, true);
        continue;
      }
      i++;
      stack.pop();
    } else if (c === 0x5b) {
      stack.push({ object: false, keys: undefined, at: 0 });
      i = ws(i + 1);
      if (text.charCodeAt(i) !== 0x5d) continue;
      i++;
      stack.pop();
    } else if (c === 0x22) {
      i = string(i);
    } else if (c === 0x2d || isDigit(c)) {
      i = number(i);
    } else if (c === 0x74) {
      i = literal(i, 'true');
    } else if (c === 0x66) {
      i = literal(i, 'false');
    } else if (c === 0x6e) {
      i = literal(i, 'null');
    } else {
      const top = stack[stack.length - 1];
      if (top !== undefined && !top.object && top.at !== 0 && c === 0x5d) fail(i, 'a value (JSON allows no comma before "]")');
      fail(i, top === undefined ? 'a value (an object such as {"key": "value"})' : 'a value');
    }
    // After a value: a comma and the next member, or the end of containers.
    for (;;) {
      i = ws(i);
      const top = stack[stack.length - 1];
      if (top === undefined) {
        if (i < n) fail(i, 'the end of the file (one JSON value per file)');
        return dups;
      }
      const d = text.charCodeAt(i);
      if (d === 0x2c) {
        i = ws(i + 1);
        if (top.object) i = key(i, false);
        else top.at = (top.at as number) + 1;
        break;
      }
      if (d === (top.object ? 0x7d : 0x5d)) {
        i++;
        stack.pop();
        continue;
      }
      fail(i, top.object ? '"," or "}"' : '"," or "]"');
    }
  }
}

function positionOf(text: string, i: number): JsonPosition {
  return positionsOf(text, [i]).get(i)!;
}

/**
 * Line and column of each offset, in one pass over the text (a current.conf
 * may repeat a key thousands of times). \n, \r\n and a lone \r each end a
 * line, as editors count them; columns count characters, not UTF-16 units.
 */
function positionsOf(text: string, offsets: readonly number[]): Map<number, JsonPosition> {
  const wanted = [...new Set(offsets)].sort((a, b) => a - b);
  const out = new Map<number, JsonPosition>();
  let line = 1;
  let column = 1;
  let k = 0;
  for (const target of wanted) {
    for (; k < target && k < text.length; k++) {
      const c = text.charCodeAt(k);
      if (c === 0x0a || (c === 0x0d && text.charCodeAt(k + 1) !== 0x0a)) {
        line++;
        column = 1;
      } else if (c !== 0x0d && !(c >= 0xdc00 && c <= 0xdfff && k > 0 && isHigh(text.charCodeAt(k - 1)))) {
        column++;
      }
    }
    out.set(target, { line, column });
  }
  return out;
}

const isHigh = (c: number): boolean => c >= 0xd800 && c <= 0xdbff;

/**
 * The kind of character at `i`, never the character itself unless it is
 * JSON's own punctuation: a syntax error in a file only root may read
 * must not leak its text, not even a letter of it.
 */
function describeAt(text: string, i: number): string {
  if (i >= text.length) return 'the end of the file';
  const ch = String.fromCodePoint(text.codePointAt(i)!);
  const c = ch.codePointAt(0)!;
  const u = `U+${c.toString(16).toUpperCase().padStart(4, '0')}`;
  if ('{}[],:"'.includes(ch)) return JSON.stringify(ch);
  if (ch === '/') return '"/" (JSON has no comments)';
  if (ch === "'") return 'a single quote (JSON strings take double quotes)';
  if (/[A-Za-z]/.test(ch)) return 'a letter';
  if (/[0-9]/.test(ch)) return 'a digit';
  if (ch === '\n' || ch === '\r') return 'a line break';
  if (ch === '\t') return 'a tab';
  if (c < 0x20 || c === 0x7f) return `a control character (${u})`;
  if (c === BOM) return `a byte order mark (${u}) not at the start of the file`;
  if (c === 0xfffd) return 'bytes that are not UTF-8 (save the file as UTF-8)';
  if (c === 0x201c || c === 0x201d || c === 0x2018 || c === 0x2019) return `a typographic quote (${u}; JSON takes a plain ")`;
  if (/\s/u.test(ch)) return `a non-ASCII space (${u})`;
  if ((c >= 0x200b && c <= 0x200f) || c === 0x2060) return `an invisible character (${u})`;
  if (c > 0x7f) return 'a non-ASCII character';
  return 'a punctuation character';
}
