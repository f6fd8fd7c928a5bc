/**
 * Commands as data (citty's idea, on node's util.parseArgs): a CommandSpec
 * names a command's options, positionals and exit codes once; argv parsing,
 * typed values, usage errors and the --help text are all derived from it.
 *
 * This module and the table (src/cli/commands.ts) are what main.ts loads for
 * every command, the resident agent included: they import no command's code
 * (each is loaded by its spec's `load` when run; BENCHMARKS.md section 3).
 */
import { parseArgs } from 'node:util';
import { RelinkError } from '../errors.js';

/** Exit codes: documented in the README and in every --help. */
export const EXIT = { ok: 0, failed: 1, usage: 2 } as const;

export const DEFAULT_CONFIG = '/etc/relink/config.json';

/** A mistake in the command line: main prints it with "Try: relink CMD --help" and exits 2. */
export class UsageError extends RelinkError {
  constructor(message: string) {
    super('USAGE', message);
    this.name = 'UsageError';
  }
}

/** Where a command's output goes, and the environment main read for it. */
export interface IO {
  readonly stdout: (text: string) => void;
  readonly stderr: (text: string) => void;
  /** Environment the CLI was started with (read only by main.ts and passed down). */
  readonly env: Readonly<Record<string, string | undefined>>;
}

/**
 * Turns an option's text into a typed value. A value it refuses becomes the
 * usage error `--NAME must be WHAT (found: "TEXT")`.
 */
export interface Parser<T> {
  /** What a valid value is, after "must be": "a positive integer". */
  readonly what: string;
  /** The value, or undefined when `text` is not valid. */
  readonly parse: (text: string) => T | undefined;
  /** Values it refuses (at least one): test/cli.test.ts runs the first through the real CLI, each through parseCommand. */
  readonly rejects: readonly string[];
}

export interface OptionSpec {
  /** The long name, without "--": "timeout". */
  readonly name: string;
  /** A one-letter alias, without "-": "c". */
  readonly short?: string;
  /** "boolean": a flag; "string": takes a value (`--timeout 30` or `--timeout=30`). */
  readonly type: 'boolean' | 'string';
  /** The value's name in the usage line and --help ("FILE", "S", "N"); for "string" options. */
  readonly value?: string;
  /** One line for --help, wrapped there; may be long. */
  readonly help: string;
  /** Types the value (a number, a time); without it a "string" option's value is its text. */
  readonly parser?: Parser<unknown>;
}

export interface PositionalSpec {
  /** As the usage line shows it: "RELEASE", "APP". */
  readonly name: string;
  readonly help: string;
  /** Without it the positional may be left out. */
  readonly required?: true;
}

export interface ExitSpec {
  readonly code: number;
  readonly meaning: string;
}

export interface CommandSpec {
  /** `relink NAME`. */
  readonly name: string;
  /** One line in `relink --help`. */
  readonly summary: string;
  /**
   * What follows `relink NAME` in the usage line, when the options and
   * positionals in order do not say it ("(RELEASE | --bin PATH --cfg PATH)").
   */
  readonly usage?: string;
  /** Paragraphs printed as written between the usage line and the options (lines of 78 characters at most). */
  readonly description: string;
  readonly positionals?: readonly PositionalSpec[];
  /** In the order --help lists them; -h/--help is added to every command. */
  readonly options: readonly OptionSpec[];
  /** Exit codes and their meaning; 2 (usage error) is added to every command. */
  readonly exits: readonly ExitSpec[];
  /**
   * The command ends itself gracefully on SIGTERM/SIGINT (`stop`); any other
   * ends at once with 128 + the signal's number.
   */
  readonly ownsStop?: true;
  /**
   * The command's code, imported when it runs: `async (): Loaded => (await
   * import('./NAME.js')).nameCommand`. The return type is written out: TypeScript cannot
   * infer it through the implementation, whose type refers back to this entry.
   */
  readonly load: () => Loaded;
}

// `any`: each command is typed by its own entry (Command<SpecOf<'name'>>); main
// runs them all through this one signature.
export type Loaded = Promise<Command<any>>;

type OptionValue<O extends OptionSpec> = O extends { readonly parser: Parser<infer T> } ? T : O['type'] extends 'boolean' ? boolean : string;
type PositionalValue<P extends PositionalSpec> = P extends { readonly required: true } ? string : string | undefined;

/** The options given, typed by the spec: a flag is true, a parsed option its parser's type, others their text. */
export type Values<S extends Pick<CommandSpec, 'options'>> = { readonly [O in S['options'][number] as O['name']]?: OptionValue<O> };
/** The positionals by name: a string if required, else possibly undefined. */
export type Positionals<S extends Pick<CommandSpec, 'positionals'>> = S['positionals'] extends readonly PositionalSpec[]
  ? { readonly [P in S['positionals'][number] as P['name']]: PositionalValue<P> }
  : Record<string, never>;

export interface Input<S extends CommandSpec> {
  readonly values: Values<S>;
  readonly positionals: Positionals<S>;
}

/** A command's implementation: returns its exit code or throws (UsageError, RelinkError). */
export interface Command<S extends CommandSpec> {
  /** `stop` resolves with "SIGTERM" or "SIGINT". */
  readonly run: (input: Input<S>, io: IO, stop: Promise<string>) => Promise<number>;
}

const HELP_OPTION = { name: 'help', short: 'h', type: 'boolean', help: 'this text' } as const satisfies OptionSpec;
const USAGE_EXIT: ExitSpec = { code: EXIT.usage, meaning: 'usage error' };

/**
 * argv after the command's name, checked against `spec`: strict (an unknown
 * option, a missing value or an unexpected positional is a UsageError), each
 * parser applied, positionals counted. "help" when -h/--help is given (and
 * the rest is well-formed), whatever the values.
 */
export function parseCommand<S extends CommandSpec>(spec: S, args: readonly string[]): Input<S> | 'help' {
  const options: Record<string, { type: 'boolean' | 'string'; short?: string }> = {};
  for (const o of [...spec.options, HELP_OPTION]) options[o.name] = o.short === undefined ? { type: o.type } : { type: o.type, short: o.short };
  const declared = spec.positionals ?? [];
  // A negative number after an option that takes a value (-n -5) is that
  // value, for its parser to judge; parseArgs would call it ambiguous and
  // suggest a syntax of its own.
  const valued = new Map<string, string>();
  for (const o of spec.options) {
    if (o.type !== 'string') continue;
    valued.set(`--${o.name}`, o.name);
    if (o.short !== undefined) valued.set(`-${o.short}`, o.name);
  }
  const argv = args.flatMap((a, i) => {
    if (/^-\d/.test(a) && valued.has(args[i - 1] ?? '')) return [];
    const name = valued.get(a);
    const next = args[i + 1];
    return name !== undefined && next !== undefined && /^-\d/.test(next) ? [`--${name}=${next}`] : [a];
  });
  let parsed;
  try {
    parsed = parseArgs({ args: argv, options, allowPositionals: declared.length > 0, strict: true });
  } catch (err) {
    // parseArgs goes on about `--` after naming the problem: one line is enough.
    throw new UsageError((err as Error).message.replace(/\. To specify a positional argument.*$/s, ''));
  }
  if (parsed.values['help'] === true) return 'help';
  const values: Record<string, unknown> = {};
  for (const o of spec.options) {
    const given = parsed.values[o.name];
    if (given === undefined) continue;
    if (o.parser === undefined || typeof given !== 'string') {
      values[o.name] = given;
      continue;
    }
    const value = o.parser.parse(given);
    if (value === undefined) throw new UsageError(`--${o.name} must be ${o.parser.what} (found: ${JSON.stringify(given)})`);
    values[o.name] = value;
  }
  const got = parsed.positionals;
  if (got.length > declared.length) {
    const names = declared.map((p) => p.name).join(' ');
    throw new UsageError(`expected at most ${declared.length === 1 ? 'one' : declared.length} ${names}, got ${got.length}: ${got.join(' ')}`);
  }
  const positionals: Record<string, string | undefined> = {};
  declared.forEach((p, i) => {
    if (p.required === true && got[i] === undefined) throw new UsageError(`missing ${p.name}`);
    positionals[p.name] = got[i];
  });
  return { values, positionals } as unknown as Input<S>;
}

const WIDTH = 78;

/**
 * `text` broken at spaces into lines of `width` at most (a longer word
 * stays whole), the first after `first`, the others after `indent`; `words`
 * splits it (by default at every run of spaces).
 */
function wrap(text: string, width: number, first: string, indent: string, words = text.split(/\s+/)): string {
  const lines: string[] = [];
  let line = first;
  let empty = true;
  for (const word of words.filter((w) => w !== '')) {
    if (!empty && line.length + 1 + word.length > width) {
      lines.push(line);
      line = indent + word;
    } else {
      line += (empty ? '' : ' ') + word;
    }
    empty = false;
  }
  lines.push(line);
  return lines.join('\n');
}

/** `line` split at the spaces outside brackets and parentheses. */
function groups(line: string): string[] {
  const out: string[] = [];
  let depth = 0;
  let start = 0;
  for (let i = 0; i < line.length; i++) {
    const c = line[i];
    if (c === '[' || c === '(') depth++;
    else if (c === ']' || c === ')') depth--;
    else if (c === ' ' && depth === 0) {
      out.push(line.slice(start, i));
      start = i + 1;
    }
  }
  out.push(line.slice(start));
  return out;
}

/** The usage line after `relink NAME`: the spec's own, else each option and positional in order. */
export function usageOf(spec: CommandSpec): string {
  if (spec.usage !== undefined) return spec.usage;
  const options = spec.options.map((o) => `[--${o.name}${o.value === undefined ? '' : ` ${o.value}`}]`);
  const positionals = (spec.positionals ?? []).map((p) => (p.required === true ? p.name : `[${p.name}]`));
  return [...options, ...positionals].join(' ');
}

/** Every exit code of the command, usage error included, by code. */
export function exitsOf(spec: CommandSpec): readonly ExitSpec[] {
  const all = spec.exits.some((e) => e.code === EXIT.usage) ? spec.exits : [...spec.exits, USAGE_EXIT];
  return [...all].sort((a, b) => a.code - b.code);
}

/** `relink NAME --help`. */
export function helpText(spec: CommandSpec): string {
  const usage = usageOf(spec);
  // Broken between groups only: "[--timeout S]" and "(RELEASE | --bin PATH --cfg PATH)" stay whole.
  const line = `relink ${spec.name}${usage === '' ? '' : ` ${usage}`}`;
  const out = [wrap(line, WIDTH, 'Usage: ', '         ', groups(line)), '', spec.description.trim(), ''];
  const columns = (rows: readonly (readonly [string, string])[]) => {
    const width = Math.max(...rows.map(([left]) => left.length)) + 2;
    return rows.map(([left, help]) => wrap(help, WIDTH, `  ${left.padEnd(width)}`, ' '.repeat(width + 2)));
  };
  if (spec.positionals !== undefined && spec.positionals.length > 0) {
    out.push('Arguments:', ...columns(spec.positionals.map((p) => [p.name, p.help])), '');
  }
  const options: readonly OptionSpec[] = [...spec.options, HELP_OPTION];
  const anyShort = options.some((o) => o.short !== undefined && o !== HELP_OPTION);
  out.push('Options:', ...columns(options.map((o) => {
    const long = `--${o.name}${o.value === undefined ? '' : ` ${o.value}`}`;
    return [o.short !== undefined ? `-${o.short}, ${long}` : anyShort ? `    ${long}` : long, o.help];
  })), '');
  // A code stays on the line of its meaning's first word.
  const exits = exitsOf(spec).map((e, i, all) => `${e.code} ${e.meaning}${i === all.length - 1 ? '.' : ';'}`);
  out.push(wrap(exits.join(' '), WIDTH, 'Exit codes: ', '', exits.flatMap((e) => e.replace(/^(\d+) /, '$1\u00a0').split(' ')).map((w) => w.replace('\u00a0', ' '))));
  return `${out.join('\n')}\n`;
}

/** The command list of `relink --help`. */
export function commandList(specs: readonly CommandSpec[]): string {
  const width = Math.max(10, ...specs.map((s) => s.name.length + 1));
  return specs.map((s) => `  ${s.name.padEnd(width)} ${s.summary}`).join('\n');
}

/** A positive number of seconds, decimal (30, 0.5): not 1e3, 0x10 or Infinity. */
export const SECONDS: Parser<number> = {
  what: 'a positive number of seconds',
  parse: (text) => {
    const s = /^\d+(\.\d+)?$/.test(text) ? Number(text) : NaN;
    return Number.isFinite(s) && s > 0 ? s : undefined;
  },
  rejects: ['1e3', '0x10', '0', '-1', 'soon'],
};

/** A positive integer in decimal digits (a count: --keep, --limit). */
export const COUNT: Parser<number> = {
  what: 'a positive integer',
  parse: (text) => {
    const n = /^\d+$/.test(text) ? Number(text) : NaN;
    return Number.isSafeInteger(n) && n >= 1 ? n : undefined;
  },
  rejects: ['1e3', '0', '-1', '1.5', 'x', ''],
};

/** A number of lines, 0 or more, in decimal digits (relink logs -n). */
export const LINES: Parser<number> = {
  what: 'a whole number of lines, 0 or more',
  parse: (text) => {
    const n = /^\d{1,9}$/.test(text) ? Number(text) : NaN;
    return Number.isSafeInteger(n) ? n : undefined;
  },
  rejects: ['-1', '1.5', 'ten', '1e3', ''],
};

/** A sha256 as 64 hex digits (what sha256sum prints), lowercased. */
export const SHA256: Parser<string> = {
  what: 'a sha256 as 64 hex digits',
  parse: (text) => (/^[0-9a-fA-F]{64}$/.test(text) ? text.toLowerCase() : undefined),
  rejects: ['abc', 'g'.repeat(64), `${'0'.repeat(64)}0`, ''],
};

/** A TCP port, 1-65535, in decimal digits. */
export const PORT: Parser<number> = {
  what: 'a port number, 1-65535',
  parse: (text) => {
    const n = /^\d{1,5}$/.test(text) ? Number(text) : NaN;
    return n >= 1 && n <= 65535 ? n : undefined;
  },
  rejects: ['0x50', '0', '65536', 'http'],
};
