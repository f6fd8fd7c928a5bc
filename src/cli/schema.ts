import { configJsonSchema } from '../config.js';
import { EXIT, parse, type IO } from './io.js';
import type { Command } from './main.js';

const HELP = `Usage: relink schema

Print the JSON Schema of the agent config (draft-07), generated from the
schema the agent validates with: every key with its description, default
and bounds. Editors use it to check and complete a config that names it:

  {"$schema": "/usr/lib/node_modules/relink/config.schema.json", ...}

The package ships the same text as config.schema.json (\`npm run schema\`
regenerates it from a checkout). The agent itself ignores "$schema".

Options:
  -h, --help  this text

Exit codes: 0 printed, 2 usage error.
`;

/** The schema as `relink schema` prints it and config.schema.json holds it: 2-space JSON and a newline. */
export function configSchemaText(): string {
  return `${JSON.stringify(configJsonSchema(), null, 2)}\n`;
}

export const schemaCommand: Command = {
  async run(args: string[], io: IO): Promise<number> {
    const { values } = parse(args, {});
    if (values.help) {
      io.stdout(HELP);
      return EXIT.ok;
    }
    io.stdout(configSchemaText());
    return EXIT.ok;
  },
};
