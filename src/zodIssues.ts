/**
 * zod issues as relink's own errors: key, rule, found, like every other
 * refusal. zod's texts ("Invalid input: expected number, received string")
 * are replaced by rules phrased from the issue and from the schema at the
 * key ("must be an integer from 100 to 600000"); a message the schema gives
 * itself (a refinement, a custom `error`) is kept as written.
 */
import type { z } from 'zod';
import { fileError, MAX_PROBLEMS, RelinkErrors, type ErrorCode, type RelinkError } from './errors.js';
import { keyPath } from './json.js';
import { looksLikeUrl, redactUrl } from './redact.js';

export { keyPath } from './json.js';

/**
 * zod gives a schema's own message precedence over a per-parse error map
 * (zod 4, "error precedence"), so an issue that comes back with this message
 * had none of its own, and is phrased here.
 */
const UNPHRASED = '\u0000relink:unphrased';

export interface SchemaCodes {
  /** For every problem but unknown keys (CONFIG_INVALID, CURRENT_INVALID). */
  readonly invalid: ErrorCode;
  /** For a key the schema does not know (may equal `invalid`). */
  readonly unknownKey: ErrorCode;
}

/**
 * Parse `input` with `schema`; on failure throw RelinkErrors, one problem per
 * issue, each naming `file`, the key path, the rule and what was found.
 * Synchronous schemas only (an async refinement needs safeParseAsync).
 */
export function parseWithSchema<S extends z.ZodType>(schema: S, input: unknown, file: string, codes: SchemaCodes): z.output<S> {
  const parsed = schema.safeParse(input, { error: () => UNPHRASED });
  if (parsed.success) return parsed.data;
  const { listed, uncounted } = zodProblems(parsed.error, file, codes.invalid, codes.unknownKey, input, schema);
  throw new RelinkErrors(listed, uncounted);
}

/**
 * One RelinkError per zod issue, each naming the file and the key. Unknown
 * keys get their own code and one error per key, with the nearest known key
 * at that place when one is close (`"relaod"`: did you mean "reload"?).
 * `schema` is what `error` came from: it names the known keys and phrases
 * issues that have no message of their own. Past MAX_PROBLEMS, problems are
 * only counted (`uncounted`), which is all RelinkErrors shows of them: a
 * current.conf with 2,000 unknown keys cost 200 ms per read under the
 * agent's interpreter-only node when each got its suggestion (bench
 * section 6), 3 ms with the count.
 */
export function zodProblems(
  error: z.ZodError,
  file: string,
  code: ErrorCode,
  unknownKeyCode: ErrorCode,
  input: unknown,
  schema?: z.ZodType,
): { listed: RelinkError[]; uncounted: number } {
  const out: RelinkError[] = [];
  let uncounted = 0;
  // A typo'd key also makes the real key "missing": name the typo first, it is the cause.
  const issues = tightestBounds(error.issues).sort((a, b) => Number(b.code === 'unrecognized_keys') - Number(a.code === 'unrecognized_keys'));
  for (const issue of issues) {
    if (issue.code === 'unrecognized_keys') {
      const here = valueAt(input, issue.path);
      const present = here !== null && typeof here === 'object' ? Object.keys(here) : [];
      const known = schema === undefined ? [] : knownKeys(schemaAt(schema, issue.path)).filter((k) => !present.includes(k));
      for (const k of issue.keys) {
        if (out.length >= MAX_PROBLEMS) {
          uncounted += 1;
          continue;
        }
        const key = keyPath([...issue.path, k]);
        const near = nearest(k, known);
        const rule = near === undefined ? 'is not a known key' : `is not a known key (did you mean ${JSON.stringify(near)}?)`;
        out.push(fileError(unknownKeyCode, file, key, rule, describe(valueAt(input, [...issue.path, k]), [...issue.path, k])));
      }
      continue;
    }
    if (out.length >= MAX_PROBLEMS) {
      uncounted += 1;
      continue;
    }
    const key = issue.path.length === 0 ? undefined : keyPath(issue.path);
    const found = valueAt(input, issue.path);
    // zod reports a missing key as a type mismatch with "undefined": say it plainly.
    if (found === undefined && issue.code === 'invalid_type' && key !== undefined) {
      out.push(fileError(code, file, key, 'is required', 'the key is missing'));
      continue;
    }
    const rule = issue.message === UNPHRASED ? phrase(issue, schema === undefined ? undefined : schemaAt(schema, issue.path)) : issue.message;
    out.push(fileError(code, file, key, rule, describe(found, issue.path)));
  }
  return { listed: out, uncounted };
}

/**
 * One bound per key and side: a number past two upper bounds (an integer's
 * safe range and the key's own maximum, 1e300 for a timeout) is told the
 * tighter one only, not two rules for one value.
 */
function tightestBounds(issues: readonly z.core.$ZodIssue[]): z.core.$ZodIssue[] {
  const best = new Map<string, z.core.$ZodIssue>();
  const keyOf = (i: z.core.$ZodIssue): string | undefined => (i.code === 'too_big' || i.code === 'too_small' ? `${i.code}\u0000${keyPath(i.path)}` : undefined);
  const bound = (i: z.core.$ZodIssue): number => (i.code === 'too_big' ? Number(i.maximum) : i.code === 'too_small' ? Number(i.minimum) : Number.NaN);
  for (const i of issues) {
    const k = keyOf(i);
    if (k === undefined) continue;
    const seen = best.get(k);
    const tighter = seen === undefined || (i.code === 'too_big' ? bound(i) < bound(seen) : bound(i) > bound(seen));
    if (tighter) best.set(k, i);
  }
  return issues.filter((i) => {
    const k = keyOf(i);
    return k === undefined || best.get(k) === i;
  });
}

/** The rule an issue without a message of its own broke, in relink's words. */
function phrase(issue: z.core.$ZodIssue, node: z.ZodType | undefined): string {
  const expected = node === undefined ? undefined : expectation(node);
  switch (issue.code) {
    case 'invalid_type':
      return expected !== undefined ? `must be ${expected}` : `must be ${withArticle(issue.expected)}`;
    case 'invalid_union':
      return expected !== undefined ? `must be ${expected}` : 'must have one of the allowed forms';
    case 'too_small':
    case 'too_big': {
      const small = issue.code === 'too_small';
      const bound = Number(small ? issue.minimum : issue.maximum);
      const inclusive = issue.inclusive !== false;
      if (issue.origin === 'number' || issue.origin === 'bigint' || issue.origin === 'int') {
        if (small) return inclusive ? `must be at least ${bound}` : `must be greater than ${bound}`;
        return inclusive ? `must be at most ${bound}` : `must be less than ${bound}`;
      }
      const unit = issue.origin === 'string' ? 'character' : 'item';
      const n = `${bound} ${unit}${bound === 1 ? '' : 's'}`;
      if (issue.exact === true) return `must have exactly ${n}`;
      if (small && bound === 1 && inclusive && issue.origin === 'string') return 'must not be empty';
      return small ? `must have at least ${n}` : `must have at most ${n}`;
    }
    case 'invalid_value':
      return `must be ${oneOf(issue.values)}`;
    case 'invalid_format':
      switch (issue.format) {
        case 'regex':
          return `must match the pattern ${issue.pattern ?? ''}`.trimEnd();
        case 'url':
          return 'must be a URL';
        case 'includes':
          return `must contain ${JSON.stringify((issue as { includes?: string }).includes ?? '')}`;
        case 'starts_with':
          return `must start with ${JSON.stringify((issue as { prefix?: string }).prefix ?? '')}`;
        case 'ends_with':
          return `must end with ${JSON.stringify((issue as { suffix?: string }).suffix ?? '')}`;
        default:
          return `must be a valid ${issue.format}`;
      }
    case 'not_multiple_of':
      return `must be a multiple of ${String(issue.divisor)}`;
    case 'invalid_key':
      return 'has a key that is not allowed';
    case 'invalid_element':
      return 'has a value that is not allowed';
    default:
      return 'is not valid';
  }
}

// --- reading the schema ------------------------------------------------------

interface Def {
  readonly type: string;
  readonly innerType?: z.ZodType;
  readonly in?: z.ZodType;
  readonly shape?: Record<string, z.ZodType>;
  readonly element?: z.ZodType;
  readonly valueType?: z.ZodType;
  readonly options?: readonly z.ZodType[];
  readonly entries?: Record<string, unknown>;
  readonly values?: readonly unknown[];
}

const defOf = (s: z.ZodType): Def => (s as unknown as { _zod: { def: Def } })._zod.def;

const WRAPPERS = new Set(['default', 'prefault', 'optional', 'nonoptional', 'readonly', 'catch', 'nullable']);

/** The schema with its wrappers (defaults, optional, nullable) and transforms taken off. */
function unwrap(s: z.ZodType): z.ZodType {
  for (;;) {
    const d = defOf(s);
    if (WRAPPERS.has(d.type) && d.innerType !== undefined) s = d.innerType;
    else if (d.type === 'pipe' && d.in !== undefined) s = d.in;
    else return s;
  }
}

/** The schema of the value at `path`, or undefined when the path leaves the schema. */
export function schemaAt(root: z.ZodType, path: readonly PropertyKey[]): z.ZodType | undefined {
  let cur: z.ZodType | undefined = root;
  for (const part of path) {
    if (cur === undefined) return undefined;
    const s = unwrap(cur);
    const d = defOf(s);
    if (d.type === 'object') cur = typeof part === 'string' ? d.shape?.[part] : undefined;
    else if (d.type === 'array') cur = typeof part === 'number' ? d.element : undefined;
    else if (d.type === 'record') cur = d.valueType;
    else if (d.type === 'union') cur = d.options?.map((o) => schemaAt(o, [part])).find((o) => o !== undefined);
    else return undefined;
  }
  return cur;
}

/** The keys an object schema knows, in its order; none for anything else. */
export function knownKeys(node: z.ZodType | undefined): string[] {
  if (node === undefined) return [];
  const d = defOf(unwrap(node));
  if (d.type === 'object') return Object.keys(d.shape ?? {});
  if (d.type === 'union') return [...new Set((d.options ?? []).flatMap((o) => knownKeys(o)))];
  return [];
}

/** What a schema accepts, as the object of "must be ...": "an integer from 100 to 600000, or null". */
function expectation(node: z.ZodType): string | undefined {
  let s = node;
  let nullable = false;
  for (;;) {
    const d = defOf(s);
    if (d.type === 'nullable') nullable = true;
    if (WRAPPERS.has(d.type) && d.innerType !== undefined) s = d.innerType;
    else if (d.type === 'pipe' && d.in !== undefined) s = d.in;
    else break;
  }
  const d = defOf(s);
  let what: string | undefined;
  switch (d.type) {
    case 'number': {
      const n = s as unknown as { isInt: boolean; minValue: number | null; maxValue: number | null };
      const kind = n.isInt ? 'an integer' : 'a number';
      const min = n.minValue !== null && n.minValue > Number.MIN_SAFE_INTEGER ? n.minValue : undefined;
      const max = n.maxValue !== null && n.maxValue < Number.MAX_SAFE_INTEGER ? n.maxValue : undefined;
      what = min !== undefined && max !== undefined ? `${kind} from ${min} to ${max}`
        : min !== undefined ? `${kind} of at least ${min}` : max !== undefined ? `${kind} of at most ${max}` : kind;
      break;
    }
    case 'string':
      what = 'a string';
      break;
    case 'boolean':
      what = 'true or false';
      break;
    case 'null':
      what = 'null';
      break;
    case 'enum':
      what = oneOf(Object.values(d.entries ?? {}));
      break;
    case 'literal':
      what = oneOf(d.values ?? []);
      break;
    case 'array':
      what = 'an array [...]';
      break;
    case 'object':
      what = 'an object {...}';
      break;
    case 'record':
      what = 'an object {...}';
      break;
    case 'union': {
      const parts = (d.options ?? []).map(expectation);
      what = parts.every((p) => p !== undefined) ? parts.join(' or ') : undefined;
      break;
    }
    default:
      what = undefined;
  }
  if (what === undefined) return undefined;
  return nullable ? `${what}, or null` : what;
}

function oneOf(values: readonly unknown[]): string {
  const shown = values.map((v) => JSON.stringify(v) ?? String(v));
  if (shown.length <= 1) return shown[0] ?? 'nothing';
  return `one of ${shown.slice(0, -1).join(', ')} or ${shown[shown.length - 1]}`;
}

function withArticle(type: string): string {
  const words: Record<string, string> = { int: 'an integer', number: 'a number', string: 'a string', boolean: 'true or false', object: 'an object {...}', array: 'an array [...]', null: 'null' };
  return words[type] ?? `of type ${type}`;
}

// --- nearest known key ---------------------------------------------------------

/**
 * The known key closest to `key` (case ignored; a swap of two neighbouring
 * letters counts as one edit, the usual typo), if it is within a third of
 * the key's length, at least one edit. The first in schema order wins a tie.
 */
export function nearest(key: string, known: readonly string[]): string | undefined {
  let best: string | undefined;
  let bestDistance = Infinity;
  for (const k of known) {
    const d = editDistance(key.toLowerCase(), k.toLowerCase());
    if (d < bestDistance) {
      best = k;
      bestDistance = d;
    }
  }
  if (best === undefined) return undefined;
  return bestDistance <= Math.max(1, Math.floor(Math.max(key.length, best.length) / 3)) ? best : undefined;
}

/** Optimal string alignment distance: insertions, deletions, substitutions and adjacent swaps. */
function editDistance(a: string, b: string): number {
  // Keys are short; a key longer than this is no typo of a known one.
  if (Math.abs(a.length - b.length) > 8 || a.length > 64 || b.length > 64) return Infinity;
  const rows: number[][] = [];
  for (let i = 0; i <= a.length; i++) {
    const row: number[] = [i];
    for (let j = 1; j <= b.length; j++) {
      if (i === 0) {
        row.push(j);
        continue;
      }
      const cost = a[i - 1] === b[j - 1] ? 0 : 1;
      let v = Math.min(rows[i - 1]![j]! + 1, row[j - 1]! + 1, rows[i - 1]![j - 1]! + cost);
      if (i > 1 && j > 1 && a[i - 1] === b[j - 2] && a[i - 2] === b[j - 1]) v = Math.min(v, rows[i - 2]![j - 2]! + 1);
      row.push(v);
    }
    rows.push(row);
  }
  return rows[a.length]![b.length]!;
}

function valueAt(input: unknown, path: readonly PropertyKey[]): unknown {
  let cur: unknown = input;
  for (const part of path) {
    if (cur === null || typeof cur !== 'object') return undefined;
    cur = (cur as Record<PropertyKey, unknown>)[part];
  }
  return cur;
}

/**
 * A short, printable rendering of what was found. A URL anywhere in it is
 * redacted (src/redact.ts): a notifier's URL may carry a token, and a
 * refusal goes to the log and to the terminal of whoever ran the command.
 */
export function describe(value: unknown, path: readonly PropertyKey[] = []): string {
  if (value === undefined) return 'nothing';
  // A notifier's URL that does not even parse, or its command's arguments,
  // may still carry a token: only their shape is shown (a trial saw a
  // mistyped webhook URL, token and all, in the log and in agent.json).
  if (path.includes('notify')) {
    if (path.includes('command')) {
      if (Array.isArray(value) && value.length > 1 && typeof value[0] === 'string') return `${JSON.stringify(value[0])} and ${value.length - 1} argument${value.length === 2 ? '' : 's'} (not shown)`;
      if (typeof value === 'string') return 'a string (not shown)';
    }
    if (path.at(-1) === 'url' && typeof value === 'string' && !URL.canParse(value)) return `${JSON.stringify(redactUrl(value).slice(0, 12))}... (the rest not shown)`;
  }
  const json = JSON.stringify(value, (_key, v: unknown) => (typeof v === 'string' && looksLikeUrl(v) ? redactUrl(v) : v));
  if (json === undefined) return typeof value;
  return json.length > 80 ? `${json.slice(0, 77)}...` : json;
}
