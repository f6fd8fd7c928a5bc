/**
 * The agent config's JSON Schema: `relink schema` prints it, the package
 * ships it as config.schema.json, a real validator (ajv, as editors use)
 * accepts config.sample.json and rejects typos and wrong types, and the
 * README's "Agent config" table and config.sample.json hold exactly its keys.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFile } from 'node:fs/promises';
import path from 'node:path';
import { Ajv } from 'ajv';
import { configJsonSchema, loadConfig } from '../src/config.js';
import { configSchemaText } from '../src/cli/schema.js';
import { ROOT, relinkCli } from './helpers.js';

type Json = Record<string, unknown>;

const SCHEMA_FILE = path.join(ROOT, 'config.schema.json');
const SAMPLE_FILE = path.join(ROOT, 'config.sample.json');

/** Every key path in the schema (`apps[].health.liveness.periodMs`) with its schema node. */
function schemaKeys(node: Json, prefix = '', out = new Map<string, Json>()): Map<string, Json> {
  for (const option of (node.anyOf as Json[] | undefined) ?? [node]) {
    for (const [k, v] of Object.entries((option.properties as Record<string, Json> | undefined) ?? {})) {
      const key = prefix === '' ? k : `${prefix}.${k}`;
      out.set(key, v);
      schemaKeys(v, key, out);
    }
    if (option.type === 'array' && option.items !== undefined) schemaKeys(option.items as Json, `${prefix}[]`, out);
  }
  return out;
}

/** Every key path in a config value, walking only where the schema has named keys (not into `env`). */
function valueKeys(value: unknown, schema: Map<string, Json>, prefix = '', out = new Set<string>()): Set<string> {
  if (Array.isArray(value)) {
    for (const v of value) valueKeys(v, schema, `${prefix}[]`, out);
  } else if (value !== null && typeof value === 'object') {
    for (const [k, v] of Object.entries(value)) {
      const key = prefix === '' ? k : `${prefix}.${k}`;
      out.add(key);
      const node = schema.get(key);
      const named = node !== undefined && [node, ...((node.anyOf as Json[] | undefined) ?? [])].some((n) => n.properties !== undefined || n.items !== undefined);
      if (named) valueKeys(v, schema, key, out);
    }
  }
  return out;
}

function validator() {
  const ajv = new Ajv({ strict: true, allErrors: true });
  // ajv ships no formats (ajv-formats would be one more package): "uri" as editors check it.
  ajv.addFormat('uri', (s: string) => URL.canParse(s));
  return ajv.compile(JSON.parse(configSchemaText()) as Json);
}

test('`relink schema` prints the JSON Schema, and config.schema.json is that output (npm run schema regenerates it)', async () => {
  const shipped = await readFile(SCHEMA_FILE, 'utf8');
  assert.equal(shipped, configSchemaText(), 'config.schema.json is stale: run `npm run schema`');
  const printed = await relinkCli(['schema']);
  assert.equal(printed.code, 0, printed.stderr);
  assert.equal(printed.stdout, shipped);
  assert.equal(printed.stderr, '');
  const help = await relinkCli(['schema', '--help']);
  assert.equal(help.code, 0);
  assert.match(help.stdout, /^Usage: relink schema/);
  const usage = await relinkCli(['schema', 'extra']);
  assert.equal(usage.code, 2);
  assert.match(usage.stderr, /Unexpected argument 'extra'/);
  const listed = await relinkCli(['--help']);
  assert.match(listed.stdout, /^ {2}schema +print the JSON Schema of the agent config/m);
  // Shipped in the package.
  const pkg = JSON.parse(await readFile(path.join(ROOT, 'package.json'), 'utf8')) as { files: string[]; scripts: Record<string, string> };
  assert.ok(pkg.files.includes('config.schema.json'));
  assert.match(pkg.scripts.schema ?? '', /main\.ts schema > config\.schema\.json$/);
});

test('every key in the schema has a description; every key with a default shows it', () => {
  const keys = schemaKeys(configJsonSchema());
  assert.ok(keys.size > 50, `${keys.size} keys`);
  for (const [key, node] of keys) {
    assert.equal(typeof node.description, 'string', `${key} has a description`);
    assert.ok((node.description as string).length > 5, key);
  }
  // Spot checks of what an editor shows and completes.
  assert.equal(keys.get('apps[].reload.timeoutMs')?.default, 15_000);
  assert.deepEqual(keys.get('history')?.default, {});
  assert.equal(keys.get('history.maxBytes')?.default, 4_194_304);
  assert.equal(keys.get('apps[].health.liveness')?.default, null);
  assert.equal(keys.get('apps[].user')?.default, null);
});

test('a real JSON Schema validator accepts config.sample.json and rejects a typo\'d key and a wrong type', async () => {
  const validate = validator();
  const sample = JSON.parse(await readFile(SAMPLE_FILE, 'utf8')) as { apps: Json[] } & Json;
  assert.equal(validate(sample), true, JSON.stringify(validate.errors));

  const typo = structuredClone(sample);
  typo.apps[0]!.relaod = { mode: 'inplace' };
  assert.equal(validate(typo), false);
  assert.ok(validate.errors?.some((e) => e.instancePath === '/apps/0' && e.keyword === 'additionalProperties' && e.params.additionalProperty === 'relaod'), JSON.stringify(validate.errors));

  const wrongType = structuredClone(sample);
  (wrongType.apps[0]!.reload as Json).timeoutMs = '15000';
  wrongType.reconcileMs = 5.5;
  assert.equal(validate(wrongType), false);
  const paths = validate.errors?.map((e) => `${e.instancePath} ${e.keyword}`);
  assert.ok(paths?.includes('/apps/0/reload/timeoutMs type'), JSON.stringify(paths));
  assert.ok(paths?.includes('/reconcileMs type'), JSON.stringify(paths));

  const outOfRange = structuredClone(sample);
  outOfRange.history = { maxBytes: 1 };
  assert.equal(validate(outOfRange), false);
  assert.ok(validate.errors?.some((e) => e.instancePath === '/history/maxBytes' && e.keyword === 'minimum'));
  // The smallest valid config: defaults need not be written.
  assert.equal(validate({ apps: [{ name: 'web', dir: '/srv/web' }] }), true, JSON.stringify(validate.errors));
  assert.equal(validate({ apps: [] }), false);
});

test('config.sample.json names the schema with "$schema", holds every key, and loads', async () => {
  const text = await readFile(SAMPLE_FILE, 'utf8');
  assert.match(text, /^\{\n {2}"\$schema": "\.\/config\.schema\.json",\n/);
  // A deprecated alias (reload.mode) is left out of the sample: it shows what to write.
  const keys = schemaKeys(configJsonSchema());
  keys.delete('apps[].reload.mode');
  const inSample = valueKeys(JSON.parse(text), keys);
  // A nullable object set to null (preflight) does not list its own keys.
  const nulled = [...inSample].filter((k) => {
    const v = k.split(/\.|\[\]\.?/).filter(Boolean).reduce<unknown>((cur, part) => {
      const here = Array.isArray(cur) ? cur[0] : cur;
      return here !== null && typeof here === 'object' ? (here as Json)[part] : undefined;
    }, JSON.parse(text));
    return v === null;
  });
  // health.url and health.tcp exclude each other: the sample shows url.
  const excluded = inSample.has('apps[].health.url') ? ['apps[].health.tcp'] : [];
  const expected = [...keys.keys()].filter((k) => !nulled.some((n) => k.startsWith(`${n}.`)) && !excluded.includes(k));
  assert.deepEqual([...inSample].sort(), expected.sort());
  assert.ok((await loadConfig(SAMPLE_FILE)).apps.length >= 1);
});

test('the README "Agent config" table has one row per schema key: the description as its meaning, the default as its default', async () => {
  const readme = await readFile(path.join(ROOT, 'README.md'), 'utf8');
  const section = readme.slice(readme.indexOf('## Agent config'), readme.indexOf('\n## ', readme.indexOf('## Agent config') + 1));
  const rows = new Map<string, { def: string; meaning: string }>();
  for (const line of section.split('\n')) {
    const m = /^\| `([^`]+)` \| (.*?) \| (.*) \|$/.exec(line);
    if (m === null) continue;
    assert.ok(!rows.has(m[1]!), `${m[1]} has one row`);
    rows.set(m[1]!, { def: m[2]!, meaning: m[3]! });
  }
  const keys = schemaKeys(configJsonSchema());
  assert.deepEqual([...rows.keys()], [...keys.keys()], 'the table lists the schema\'s keys in its order');
  for (const [key, node] of keys) {
    const row = rows.get(key)!;
    assert.equal(row.meaning, node.description, `${key}: README meaning = schema description`);
    if (!('default' in node)) continue;
    const cell = /^`(.*)`$/.exec(row.def)?.[1];
    assert.ok(cell !== undefined, `${key}: default ${row.def}`);
    let shown: unknown = cell;
    try {
      shown = JSON.parse(cell);
    } catch {
      // A plain string default is shown without quotes: /var/lib/relink.
    }
    assert.deepEqual(shown, node.default, `${key}: README default`);
  }
});
