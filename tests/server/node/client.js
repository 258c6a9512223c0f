#!/usr/bin/env node
// Drives `clawmine serve` with the official `openai` npm client: chat, streaming (with usage),
// logprobs, completions and tools. Usage: node client.js BASE_URL (e.g. http://127.0.0.1:8000/v1).
// Exits non-zero with a message on the first failed check.
'use strict';
const OpenAI = require('openai');

function check(cond, what) {
  if (!cond) throw new Error(`check failed: ${what}`);
}

async function main() {
  const client = new OpenAI({ baseURL: process.argv[2], apiKey: 'unused' });
  const models = await client.models.list();
  const model = models.data[0].id;
  check(model === 'clawmine-demo', `model id ${model}`);

  const messages = [{ role: 'user', content: 'Hello from node' }];
  const chat = await client.chat.completions.create({ model, messages, max_tokens: 10, temperature: 0, logprobs: true, top_logprobs: 3 });
  const choice = chat.choices[0];
  check(typeof choice.message.content === 'string', 'chat content is a string');
  check(choice.logprobs.content.length === chat.usage.completion_tokens, 'one logprob entry per token');
  for (const e of choice.logprobs.content) {
    check(e.top_logprobs.length === 3, 'three top_logprobs');
    check(Math.abs(e.logprob - e.top_logprobs[0].logprob) < 1e-6, 'greedy token is the top entry');
  }

  const stream = await client.chat.completions.create({ model, messages, max_tokens: 10, temperature: 0, stream: true,
                                                          stream_options: { include_usage: true } });
  let text = '';
  let usage = null;
  let finish = null;
  for await (const chunk of stream) {
    if (chunk.usage) usage = chunk.usage;
    for (const c of chunk.choices) {
      text += c.delta.content || '';
      if (c.finish_reason) finish = c.finish_reason;
    }
  }
  check(text === choice.message.content, `streamed text equals the whole response (${JSON.stringify(text)})`);
  check(usage && usage.completion_tokens === chat.usage.completion_tokens, 'streamed usage');
  check(finish === choice.finish_reason, 'finish_reason');

  const comp = await client.completions.create({ model, prompt: 'The model', max_tokens: 5, temperature: 0, logprobs: 2 });
  check(comp.choices[0].logprobs.tokens.length === comp.usage.completion_tokens, 'completions logprobs');

  const tools = [{ type: 'function', function: { name: 'get_weather', parameters: { type: 'object', properties: { city: { type: 'string' } } } } }];
  const t = await client.chat.completions.create({ model, messages, tools, tool_choice: 'auto', max_tokens: 4 });
  check(['stop', 'length', 'tool_calls'].includes(t.choices[0].finish_reason), 'tools accepted');

  try {
    await client.chat.completions.create({ model: 'nope', messages });
    check(false, 'unknown model rejected');
  } catch (e) {
    check(e.status === 404 && /does not exist/.test(e.message), `unknown model error: ${e.message}`);
  }
  console.log('node openai client: all checks passed');
}

main().catch((e) => {
  console.error(e.stack || String(e));
  process.exit(1);
});
