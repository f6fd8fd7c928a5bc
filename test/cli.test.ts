/**
 * Every command of the table (src/cli/commands.ts), run as the real CLI:
 * --help is generated from its spec and names all of it, an unknown option
 * and every value a parser refuses are usage errors (exit 2, one line naming
 * the option, then "Try: relink CMD --help"). A command added to the table
 * is covered without touching this file.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { COMMANDS } from '../src/cli/commands.js';
import { type CommandSpec, COUNT, exitsOf, LINES, parseCommand, PORT, SECONDS, SHA256, UsageError, usageOf } from '../src/cli/spec.js';
import { writeFile } from 'node:fs/promises';
import path from 'node:path';
import { relinkCli as run, tmpDir, type CliResult } from './helpers.js';

/**
 * The real CLI, with no config file to find; SIGTERMed after 60 s, so a bad
 * value wrongly accepted (a demo started on --port 0x50) fails on its exit
 * code instead of hanging the test.
 */
function relinkCli(args: readonly string[]): Promise<CliResult> {
  return run(args, { RELINK_CONFIG: '/nonexistent/relink-cli-test.json' }, undefined, 60_000);
}

function escape(text: string): string {
  return text.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
}

function assertUsageError(r: { code: number | null; stderr: string }, command: CommandSpec, problem: RegExp, what: string): void {
  assert.equal(r.code, 2, `${what}: exit ${r.code}, stderr ${r.stderr}`);
  const lines = r.stderr.trimEnd().split('\n');
  assert.equal(lines.length, 2, `${what}: one line and the hint, got ${JSON.stringify(r.stderr)}`);
  assert.match(lines[0]!, new RegExp(`^relink ${command.name}: `), what);
  assert.match(lines[0]!, problem, what);
  assert.equal(lines[1], `Try: relink ${command.name} --help`, what);
}

for (const command of COMMANDS) {
  test(`relink ${command.name}: --help is its spec; an unknown option and each refused value exit 2 naming the option`, async () => {
    const parsed = command.options.filter((o) => o.parser !== undefined);
    const [help, unknown, ...refused] = await Promise.all([
      relinkCli([command.name, '--help']),
      relinkCli([command.name, '--no-such-option']),
      ...parsed.map((o) => relinkCli([command.name, `--${o.name}=${o.parser!.rejects[0]}`])),
    ]);

    assert.equal(help.code, 0, help.stderr);
    assert.equal(help.stderr, '');
    assert.equal(parseCommand(command, ['-h']), 'help');
    const out = help.stdout;
    assert.ok(out.startsWith(`Usage: relink ${command.name}`), out);
    assert.ok(out.includes(command.description.trim()), 'the description, as written');
    for (const o of command.options) {
      const long = `--${o.name}${o.value === undefined ? '' : ` ${o.value}`}`;
      const left = o.short === undefined ? long : `-${o.short}, ${long}`;
      assert.match(out, new RegExp(`^ +${escape(left)}  +\\S`, 'm'), `--help lists ${left} with its help`);
      assert.ok(out.replace(/\s+/g, ' ').includes(o.help.replace(/\s+/g, ' ')), `--help has ${long}'s help text`);
      assert.match(usageOf(command), new RegExp(`--${escape(o.name)}\\b`), `the usage line names --${o.name}`);
    }
    for (const p of command.positionals ?? []) {
      assert.match(out, new RegExp(`^  ${escape(p.name)}  +\\S`, 'm'), `--help lists ${p.name}`);
      assert.match(usageOf(command), new RegExp(`\\b${escape(p.name)}\\b`), `the usage line names ${p.name}`);
    }
    assert.match(out, /^ {2}-h, --help +this text$/m);
    const exits = /^Exit codes: ([\s\S]*)$/m.exec(out)?.[1]?.replace(/\s+/g, ' ') ?? '';
    for (const e of exitsOf(command)) assert.ok(exits.includes(`${e.code} ${e.meaning}`), `exit ${e.code} in ${JSON.stringify(exits)}`);
    assert.ok(exits.includes('2 usage error'));
    for (const line of out.split('\n')) assert.ok(line.length <= 80, `a line of ${line.length} characters: ${line}`);

    assertUsageError(unknown, command, /Unknown option '--no-such-option'/, 'an unknown option');
    parsed.forEach((o, i) => {
      const bad = o.parser!.rejects[0]!;
      const problem = new RegExp(`--${escape(o.name)} must be ${escape(o.parser!.what)} \\(found: ${escape(JSON.stringify(bad))}\\)`);
      assertUsageError(refused[i]!, command, problem, `--${o.name}=${bad}`);
      // Every other refused value, through the same parsing in this process (a real CLI each would take a minute).
      for (const other of o.parser!.rejects) {
        const message = `--${o.name} must be ${o.parser!.what} (found: ${JSON.stringify(other)})`;
        assert.throws(() => parseCommand(command, [`--${o.name}=${other}`]), (err: unknown) => err instanceof UsageError && err.message === message, message);
      }
      // A negative number as the value's own word (-n -5) goes to the parser, not parseArgs' "ambiguous" text.
      for (const flag of o.short === undefined ? [`--${o.name}`] : [`--${o.name}`, `-${o.short}`]) {
        const accepted = o.parser!.parse('-5') !== undefined;
        const given = (): unknown => parseCommand(command, [flag, '-5']);
        if (accepted) assert.doesNotThrow(given, `${flag} -5`);
        else assert.throws(given, (err: unknown) => err instanceof UsageError && err.message === `--${o.name} must be ${o.parser!.what} (found: "-5")`, `${flag} -5`);
      }
    });
  });
}

test('relink --help lists every command of the table with its summary', async () => {
  const r = await relinkCli(['--help']);
  assert.equal(r.code, 0, r.stderr);
  for (const c of COMMANDS) assert.match(r.stdout, new RegExp(`^ {2}${escape(c.name)} +${escape(c.summary)}$`, 'm'), c.name);
  const names = COMMANDS.map((c) => c.name);
  assert.equal(new Set(names).size, names.length, 'each name once');
  assert.equal((await relinkCli(['no-such-command'])).code, 2);
});

test('the parsers take decimal digits only: what each accepts and refuses', () => {
  for (const [text, value] of [['30', 30], ['0.5', 0.5], ['120', 120]] as const) assert.equal(SECONDS.parse(text), value, text);
  for (const [text, value] of [['1', 1], ['5', 5], ['100000', 100000]] as const) assert.equal(COUNT.parse(text), value, text);
  for (const [text, value] of [['1', 1], ['8080', 8080], ['65535', 65535]] as const) assert.equal(PORT.parse(text), value, text);
  for (const [text, value] of [['0', 0], ['10', 10], ['100000', 100000]] as const) assert.equal(LINES.parse(text), value, text);
  assert.equal(SHA256.parse('AB'.repeat(32)), 'ab'.repeat(32), 'as sha256sum prints it, lowercased');
  // The values the CLI test above passes each must really be refused (a parser that accepted one would pass there only by luck).
  for (const parser of [SECONDS, COUNT, PORT, LINES, SHA256]) {
    assert.ok(parser.rejects.length > 0);
    for (const bad of [...parser.rejects, ' 5', '5 ', 'Infinity', 'NaN']) assert.equal(parser.parse(bad), undefined, `${parser.what}: ${JSON.stringify(bad)}`);
  }
  // Every parser in the table is one of these (a new one brings its own case here).
  const used = new Set(COMMANDS.flatMap((c) => c.options.flatMap((o) => (o.parser === undefined ? [] : [o.parser]))));
  for (const p of used) assert.ok([SECONDS, COUNT, PORT, LINES, SHA256].includes(p as never), `a parser not checked here: ${p.what}`);
});

test('a release named on the command line is one name, not a path nor an upload in progress under a dot name: exit 2 naming it', async (t) => {
  const dir = await tmpDir(t);
  const config = path.join(dir, 'config.json');
  await writeFile(config, JSON.stringify({ stateDir: path.join(dir, 'state'), apps: [{ name: 'web', dir }] }));
  const dot = await run(['deploy', '--config', config, '.2.0.part']);
  assert.equal(dot.code, 2);
  assert.equal(dot.stderr, 'relink deploy: RELEASE must be a release name such as 2.0 (found ".2.0.part": a name starting with "." is an upload in progress, not a release)\nTry: relink deploy --help\n');
  const slash = await run(['rollback', '--config', config, '--to', '../2.0']);
  assert.equal(slash.code, 2);
  assert.equal(slash.stderr, 'relink rollback: --to must be a release name such as 2.0 (found "../2.0")\nTry: relink rollback --help\n');
});

test('history and status name a release file relative to the releases folder: "2.0/app" in a folder per release, not "app" for every release', async () => {
  const { releaseLabel } = await import('../src/cli/io.js');
  assert.equal(releaseLabel('/srv/shop/releases/2.0/app', '/srv/shop/releases'), '2.0/app');
  assert.equal(releaseLabel('/srv/web/release/app.2.0', '/srv/web/release'), 'app.2.0');
  assert.equal(releaseLabel('/opt/elsewhere/app', '/srv/web/release'), 'app', 'outside the releases folder: its name');
  assert.equal(releaseLabel('/srv/web/release/app.2.0', undefined), 'app.2.0', 'an app no longer in the config');
  assert.equal(releaseLabel(null, '/srv/web/release'), '-');
});

test('history and status name a release file relative to the releases folder reached through a symlink (/srv -> /data/srv): the journal holds real paths', async (t) => {
  const { releaseLabel, releasesDirsOf } = await import('../src/cli/io.js');
  const { parseConfig } = await import('../src/config.js');
  const { mkdir, symlink } = await import('node:fs/promises');
  const root = await tmpDir(t);
  await mkdir(path.join(root, 'data', 'shop', 'releases'), { recursive: true });
  await symlink(path.join(root, 'data'), path.join(root, 'srv'));
  const config = parseConfig(JSON.stringify({ apps: [{ name: 'shop', dir: path.join(root, 'srv', 'shop'), releasesDir: 'releases' }] }), path.join(root, 'config.json'));
  const dirs = await releasesDirsOf(config.apps);
  assert.equal(releaseLabel(path.join(root, 'data', 'shop', 'releases', '2.0', 'app'), dirs.get('shop')), '2.0/app');
});
