import type { z } from 'zod';
import { fileError, type ErrorCode, type RelinkError } from './errors.js';

/** `["apps", 0, "reload", "signal"]` -> `apps[0].reload.signal`; a dotted key stays whole. */
export function keyPath(path: readonly PropertyKey[]): string {
  let out = '';
  for (const part of path) {
    if (typeof part === 'number') out += `[${part}]`;
    else out += out === '' ? String(part) : `.${String(part)}`;
  }
  return out;
}

/**
 * One RelinkError per zod issue, each naming the file and the key. Unknown
 * keys get their own code and one error per key so a typo is named exactly.
 */
export function zodProblems(
  error: z.ZodError,
  file: string,
  code: ErrorCode,
  unknownKeyCode: ErrorCode,
  input: unknown,
): RelinkError[] {
  const out: RelinkError[] = [];
  // A typo'd key also makes the real key "missing": name the typo first, it is the cause.
  const issues = [...error.issues].sort((a, b) => Number(b.code === 'unrecognized_keys') - Number(a.code === 'unrecognized_keys'));
  for (const issue of issues) {
    if (issue.code === 'unrecognized_keys') {
      for (const k of issue.keys) {
        const key = keyPath([...issue.path, k]);
        out.push(fileError(unknownKeyCode, file, key, 'is not a known key', describe(valueAt(input, [...issue.path, k]))));
      }
      continue;
    }
    const key = issue.path.length === 0 ? undefined : keyPath(issue.path);
    const found = valueAt(input, issue.path);
    // zod reports a missing key as a type mismatch with "undefined": say it plainly.
    if (found === undefined && issue.code === 'invalid_type' && key !== undefined) {
      out.push(fileError(code, file, key, 'is required', 'the key is missing'));
      continue;
    }
    out.push(fileError(code, file, key, issue.message, describe(found)));
  }
  return out;
}

function valueAt(input: unknown, path: readonly PropertyKey[]): unknown {
  let cur: unknown = input;
  for (const part of path) {
    if (cur === null || typeof cur !== 'object') return undefined;
    cur = (cur as Record<PropertyKey, unknown>)[part];
  }
  return cur;
}

/** A short, printable rendering of what was found. */
export function describe(value: unknown): string {
  if (value === undefined) return 'nothing';
  const json = JSON.stringify(value);
  if (json === undefined) return typeof value;
  return json.length > 80 ? `${json.slice(0, 77)}...` : json;
}
