import { configJsonSchema } from '../config.js';
import { EXIT } from './io.js';
import type { SpecOf } from './commands.js';
import type { Command } from './spec.js';

/** The schema as `relink schema` prints it and config.schema.json holds it: 2-space JSON and a newline. */
export function configSchemaText(): string {
  return `${JSON.stringify(configJsonSchema(), null, 2)}\n`;
}

export const schemaCommand: Command<SpecOf<'schema'>> = {
  async run(_input, io) {
    io.stdout(configSchemaText());
    return EXIT.ok;
  },
};
