/**
 * The reader for hand-written JSON (src/json.ts): a byte order mark and CRLF
 * are fine, duplicate keys are found at every depth, a syntax error is
 * located by line and column without quoting the text, and the scanner
 * agrees with JSON.parse on what is JSON.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { JsonSyntaxError, keyPath, parseJson, parseJsonFile, scanJson, stripBom } from '../src/json.js';
import { MAX_PROBLEMS, RelinkErrors } from '../src/errors.js';

const CODES = { syntax: 'CURRENT_SYNTAX', duplicate: 'CURRENT_DUPLICATE_KEY' } as const;

function syntaxError(text: string): JsonSyntaxError {
  try {
    parseJson(text);
  } catch (err) {
    assert.ok(err instanceof JsonSyntaxError, `a JsonSyntaxError, not ${String(err)}`);
    return err;
  }
  return assert.fail(`accepted ${JSON.stringify(text)}`);
}

test('stripBom drops one leading U+FEFF and nothing else', () => {
  assert.equal(stripBom('\ufeff{}'), '{}');
  assert.equal(stripBom('\ufeff\ufeff{}'), '\ufeff{}');
  assert.equal(stripBom('{}\ufeff'), '{}\ufeff');
  assert.equal(stripBom(''), '');
});

test('a leading byte order mark is ignored (RFC 8259 §8.1); one anywhere else is a syntax error naming it', () => {
  assert.deepEqual(parseJson('\ufeff{"a": 1}').value, { a: 1 });
  const second = syntaxError('\ufeff\ufeff{"a": 1}');
  assert.equal(second.found, 'a byte order mark (U+FEFF) not at the start of the file');
  assert.deepEqual([second.line, second.column], [1, 1]);
  assert.match(syntaxError('{"a": 1}\ufeff').found, /byte order mark/);
});

test('CRLF line ends parse, and count as one line break for positions', () => {
  assert.deepEqual(parseJson('{\r\n  "a": 1,\r\n  "b": [2]\r\n}\r\n').value, { a: 1, b: [2] });
  const e = syntaxError('{\r\n  "a": 1,\r\n  "b": x\r\n}');
  assert.deepEqual([e.line, e.column], [3, 8]);
  // A lone CR ends a line too, as editors show it.
  const cr = syntaxError('{\r"a": 1,\r"b": x}');
  assert.deepEqual([cr.line, cr.column], [3, 6]);
});

test('duplicate keys are found at every depth, with their path and places', () => {
  const { value, duplicates } = parseJson([
    '{"bin.file": "a",',
    ' "apps": [{"reload": {"signal": "SIGHUP", "signal": "SIGUSR2"}}, {"x": 1, "x": 2, "x": 3, "x": 4, "x": 5}],',
    ' "bin.file": "b"}',
  ].join('\n'));
  assert.deepEqual(value, { 'bin.file': 'b', apps: [{ reload: { signal: 'SIGUSR2' } }, { x: 5 }] });
  const byKey = new Map(duplicates.map((d) => [d.key, d]));
  assert.deepEqual([...byKey.keys()].sort(), ['apps[0].reload.signal', 'apps[1].x', 'bin.file']);
  assert.deepEqual(byKey.get('bin.file'), { key: 'bin.file', count: 2, at: [{ line: 1, column: 2 }, { line: 3, column: 2 }] });
  assert.deepEqual(byKey.get('apps[0].reload.signal')?.at, [{ line: 2, column: 23 }, { line: 2, column: 43 }]);
  // Many repeats: counted, the first three placed.
  assert.equal(byKey.get('apps[1].x')?.count, 5);
  assert.equal(byKey.get('apps[1].x')?.at.length, 3);
});

test('keys are compared after unescaping; equal names in different objects are no duplicates', () => {
  assert.deepEqual(parseJson('{"a": 1, "\\u0061": 2}').duplicates.map((d) => d.key), ['a']);
  assert.deepEqual(parseJson('{"a": {"a": 1}, "b": {"a": 2}, "c": [{"a": 1}, {"a": 2}]}').duplicates, []);
});

test('columns count characters: an emoji before the error is one column', () => {
  const e = syntaxError('{"k😀é": x}');
  assert.deepEqual([e.line, e.column], [1, 9]);
});

for (const [what, text, expected, found, line, column] of [
  ['a trailing comma in an object', '{"a": 1,}', 'a key in double quotes (JSON allows no comma before "}")', '"}"', 1, 9],
  ['a trailing comma in an array', '[1, 2,]', 'a value (JSON allows no comma before "]")', '"]"', 1, 7],
  ['an unquoted key', '{apps: []}', 'a key in double quotes, or "}"', 'a letter', 1, 2],
  ['single quotes', "{'a': 1}", 'a key in double quotes, or "}"', 'a single quote (JSON strings take double quotes)', 1, 2],
  ['a comment', '// config\n{}', 'a value (an object such as {"key": "value"})', '"/" (JSON has no comments)', 1, 1],
  ['a missing colon', '{"a" 1}', '":" after the key', 'a digit', 1, 6],
  ['a missing comma', '{"a": 1\n "b": 2}', '"," or "}"', '"\\""', 2, 2],
  ['a cut-off file', '{"a": [1, 2', '"," or "]"', 'the end of the file', 1, 12],
  ['an unterminated string', '{"a": "xyz', 'a closing double quote', 'the end of the file', 1, 11],
  ['a raw line break in a string', '{"a": "x\ny"}', 'a closing double quote, or an escape such as \\n for a line break or \\t for a tab', 'a line break', 1, 9],
  ['a bad escape', '{"a": "\\x"}', 'an escape: \\" \\\\ \\/ \\b \\f \\n \\r \\t or \\uXXXX', 'a letter', 1, 9],
  ['a short \\u escape', '{"a": "\\u12"}', 'four hex digits after \\u', '"\\""', 1, 12],
  ['a leading zero', '{"a": 012}', '".", "e" or the end of the number (a number does not start with 0)', 'a digit', 1, 8],
  ['a bare minus', '[-]', 'a digit', '"]"', 1, 3],
  ['a decimal point without digits', '[1.]', 'a digit after the decimal point', '"]"', 1, 4],
  ['an exponent without digits', '[1e+]', 'a digit in the exponent', '"]"', 1, 5],
  ['a misspelt literal', '[ture]', '"true"', 'a letter', 1, 3],
  ['two documents', '{} {}', 'the end of the file (one JSON value per file)', '"{"', 1, 4],
  ['a typographic quote', '{\u201ca\u201d: 1}', 'a key in double quotes, or "}"', 'a typographic quote (U+201C; JSON takes a plain ")', 1, 2],
  ['a non-breaking space', '{"a":\u00a01}', 'a value', 'a non-ASCII space (U+00A0)', 1, 6],
  ['a zero-width space', '{\u200b"a": 1}', 'a key in double quotes, or "}"', 'an invisible character (U+200B)', 1, 2],
  ['a control character', '{"a": 1}\u0000', 'the end of the file (one JSON value per file)', 'a control character (U+0000)', 1, 9],
  ['bytes that are not UTF-8 (a UTF-16 file read as UTF-8)', Buffer.from([0xff, 0xfe, 0x7b, 0x00]).toString('utf8'), 'a value (an object such as {"key": "value"})', 'bytes that are not UTF-8 (save the file as UTF-8)', 1, 1],
  ['an empty text', '', 'a value (an object such as {"key": "value"})', 'the end of the file', 1, 1],
] as const) {
  test(`syntax: ${what} names the place, what was expected and the kind of character found`, () => {
    const e = syntaxError(text);
    assert.deepEqual({ expected: e.expected, found: e.found, line: e.line, column: e.column }, { expected, found, line, column });
  });
}

test('a syntax error never quotes the text: no letter of a secret reaches the message', () => {
  const secret = 'Zq9-xW7kP3v';
  // Errors right at, inside and after the secret, in JSON-ish and non-JSON text (a shadow-like line).
  for (const text of [
    `root:${secret}:19000:0:99999:7:::\n`,
    `{"password": "${secret}`,
    `{"password": "${secret}\n"}`,
    `{"password": ${secret}}`,
    `{"password": "${secret}" "x": 1}`,
    `{${secret}: 1}`,
    `{"a": 1} ${secret}`,
    `{"password": "${secret}\\q"}`,
  ]) {
    let message = '';
    try {
      parseJsonFile(text, '/srv/web/release/current.conf', CODES);
      assert.fail(`accepted ${text}`);
    } catch (err) {
      assert.ok(err instanceof RelinkErrors, String(err));
      assert.equal(err.code, 'CURRENT_SYNTAX');
      message = err.message;
    }
    for (let i = 0; i + 3 <= secret.length; i++) {
      assert.ok(!message.includes(secret.slice(i, i + 3)), `${JSON.stringify(message)} quotes ${secret.slice(i, i + 3)}`);
    }
    assert.match(message, /^\/srv\/web\/release\/current\.conf: must be valid JSON: expected .* at line \d+, column \d+ \(found: [^)]+\)?\)$/);
  }
});

test('parseJsonFile: an empty or blank file says so; a syntax error has the fileError shape', () => {
  for (const text of ['', '  \r\n\t', '\ufeff', '\ufeff\n']) {
    try {
      parseJsonFile(text, '/c.json', CODES);
      assert.fail('accepted an empty file');
    } catch (err) {
      assert.ok(err instanceof RelinkErrors);
      assert.deepEqual({ code: err.code, file: err.file, key: err.key, rule: err.rule, found: err.found },
        { code: 'CURRENT_SYNTAX', file: '/c.json', key: undefined, rule: 'must be valid JSON', found: 'an empty file' });
    }
  }
  try {
    parseJsonFile('{\n  "a": 1,\n  "b": \n}', '/c.json', CODES);
    assert.fail('accepted');
  } catch (err) {
    assert.ok(err instanceof RelinkErrors);
    assert.equal(err.problems.length, 1);
    assert.equal(err.rule, 'must be valid JSON: expected a value at line 4, column 1');
    assert.equal(err.found, '"}"');
    assert.equal(err.message, '/c.json: must be valid JSON: expected a value at line 4, column 1 (found: "}")');
  }
});

test('parseJsonFile: one problem per duplicated key, naming its path and places; capped like every list', () => {
  try {
    parseJsonFile('{"bin.file": "a", "cfg.file": "c",\r\n "bin.file": "b"}', '/r/current.conf', CODES);
    assert.fail('accepted a duplicate key');
  } catch (err) {
    assert.ok(err instanceof RelinkErrors);
    assert.equal(err.problems.length, 1);
    const p = err.problems[0]!;
    assert.deepEqual({ code: p.code, file: p.file, key: p.key }, { code: 'CURRENT_DUPLICATE_KEY', file: '/r/current.conf', key: 'bin.file' });
    assert.equal(p.message, '/r/current.conf: "bin.file": must appear only once in its object (otherwise the last one would silently win) (found: 2 times: line 1, column 2; line 2, column 2)');
  }
  const many = `{${Array.from({ length: 500 }, (_, i) => `"k${i}": 1, "k${i}": 2`).join(', ')}}`;
  try {
    parseJsonFile(many, '/r/current.conf', CODES);
    assert.fail('accepted duplicate keys');
  } catch (err) {
    assert.ok(err instanceof RelinkErrors);
    assert.equal(err.problems.length, MAX_PROBLEMS + 1);
    assert.equal(err.total, 500);
    assert.equal(err.problems.at(-1)!.message, `/r/current.conf: and ${500 - MAX_PROBLEMS} more problems`);
  }
});

test('nesting deeper than the call stack allows is scanned without overflow', () => {
  const depth = 200_000;
  const deep = `${'['.repeat(depth)}{"a": 1, "a": 2}${']'.repeat(depth)}`;
  assert.equal(scanJson(deep)[0]?.key, `${'[0]'.repeat(depth)}.a`);
  assert.equal(parseJson(deep).duplicates.length, 1);
  assert.equal(syntaxError(`${'['.repeat(depth)}${']'.repeat(depth - 1)}`).expected, '"," or "]"');
});

test('the scanner and JSON.parse agree on what is JSON, and on duplicates (a corpus and 5,500 mutations of a config)', () => {
  const corpus = [
    '{}', '[]', '0', '-0', '1.5e+10', '1E-2', '"x"', 'true', 'false', 'null', ' \t\r\n{ } ',
    '{"a":[1,{"b":null}],"c":"\\u00e9\\n\\"\\\\\\/"}', '"\\ud83d\\ude00"', '"\\ud800"', '[1,2,3]',
    '01', '1.', '.5', '+1', '1e', '-', '--1', '0x10', 'NaN', 'Infinity', '[1,]', '{,}', '{"a"}', '{"a":}', '{"a" 1}',
    '"\t"', '"\\a"', '"\\u00G0"', '[', ']', '{"a":1}}', 'nul', 'truex', '"abc', '[1 2]', '{"a":1,,"b":2}', '\u00a0{}', '{}\u2028',
  ];
  const base = JSON.stringify({ $schema: './s.json', stateDir: '/x', apps: [{ name: 'web', dir: '/srv/web', env: { A: 'é😀' }, health: { url: 'http://127.0.0.1:8080/', liveness: { periodMs: 1e4 } }, limits: { nofile: -1.5e3, core: null }, allowRoot: false }] }, null, 1);
  const pieces = ['{', '}', '[', ']', ',', ':', '"', '\\', '0', '-', '.', 'e', 'x', ' ', '\n', '\u0001', 'true', 'null', '"a":1', '"name":', '\ufeff'];
  // A fixed-seed generator: the same mutations on every run, so a failure reproduces.
  let seed = 0x2545f491;
  const rand = (n: number): number => {
    seed ^= seed << 13;
    seed ^= seed >>> 17;
    seed ^= seed << 5;
    return (seed >>> 0) % n;
  };
  for (let k = 0; k < 5_000; k++) {
    let t = base;
    for (let m = 0, edits = 1 + rand(3); m < edits; m++) {
      const at = rand(t.length + 1);
      const op = rand(3);
      if (op === 0) t = t.slice(0, at) + t.slice(at + 1);
      else if (op === 1) t = t.slice(0, at) + pieces[rand(pieces.length)]! + t.slice(at);
      else t = t.slice(0, at) + pieces[rand(pieces.length)]! + t.slice(at + 1);
    }
    corpus.push(t);
  }
  // And 500 with a key repeated in a random object (a key of the base, or a new one).
  const names = ['stateDir', 'apps', 'name', 'dir', 'A', 'url', 'liveness', 'periodMs', 'nofile', 'core', 'fresh'];
  const opens = [...base.matchAll(/\{/g)].map((m) => m.index);
  for (let k = 0; k < 500; k++) {
    const at = opens[rand(opens.length)]! + 1;
    corpus.push(`${base.slice(0, at)}"${names[rand(names.length)]!}": 0, ${base.slice(at)}`);
  }
  let accepted = 0;
  let withDuplicates = 0;
  for (const text of corpus) {
    let native: unknown;
    let nativeOk = true;
    try {
      native = JSON.parse(text);
    } catch {
      nativeOk = false;
    }
    // The scanner alone (parseJson leaves valid text without duplicates to JSON.parse).
    let oursOk = true;
    try {
      scanJson(text);
    } catch (err) {
      assert.ok(err instanceof JsonSyntaxError, `${JSON.stringify(text)}: ${String(err)}`);
      oursOk = false;
    }
    assert.equal(oursOk, nativeOk, `scanner ${oursOk ? 'accepts' : 'refuses'} what JSON.parse ${nativeOk ? 'accepts' : 'refuses'}: ${JSON.stringify(text)}`);
    if (nativeOk) {
      accepted++;
      const parsed = parseJson(text);
      assert.deepEqual(parsed.value, native);
      // The fast path (count members against key separators) finds what the scanner finds.
      assert.deepEqual(parsed.duplicates, scanJson(text), JSON.stringify(text));
      if (parsed.duplicates.length > 0) withDuplicates++;
    } else {
      assert.throws(() => parseJson(text), JsonSyntaxError);
    }
  }
  // The mutations exercise both sides.
  assert.ok(accepted > 100 && accepted < corpus.length - 100, `accepted ${accepted} of ${corpus.length}`);
  assert.ok(withDuplicates > 10, `${withDuplicates} with duplicate keys`);
});

test('keyPath writes array indexes in brackets and keeps dotted keys whole', () => {
  assert.equal(keyPath(['apps', 0, 'reload', 'signal']), 'apps[0].reload.signal');
  assert.equal(keyPath(['bin.file']), 'bin.file');
  assert.equal(keyPath([]), '');
});
