import { runDemo } from '../demo/demo.js';
import { EXIT } from './io.js';
import type { SpecOf } from './commands.js';
import type { Command } from './spec.js';

export const demoCommand: Command<SpecOf<'demo'>> = {
  async run({ values }, io, stop) {
    await runDemo({ exitAfterTour: values.exit === true, port: values.port, print: (l) => io.stdout(`${l}\n`), stop });
    return EXIT.ok;
  },
};
