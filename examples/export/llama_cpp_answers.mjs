// Greedy answers from llama.cpp for a GGUF file: node llama_cpp_answers.mjs MODEL.gguf PROMPTS.json
// Prints a JSON list of answers, one per prompt, each in a fresh chat (the GGUF's own chat template).
import fs from "node:fs";
import {getLlama, LlamaChatSession} from "node-llama-cpp";

const [modelPath, promptsPath] = process.argv.slice(2);
const prompts = JSON.parse(fs.readFileSync(promptsPath, "utf8"));
const llama = await getLlama({gpu: false});
const model = await llama.loadModel({modelPath});
const context = await model.createContext({contextSize: 1024});
const answers = [];
for (const prompt of prompts) {
  const sequence = context.getSequence();
  const session = new LlamaChatSession({contextSequence: sequence});
  answers.push(await session.prompt(prompt, {temperature: 0, maxTokens: 32}));
  session.dispose();
  sequence.dispose();
}
console.log(JSON.stringify({chatWrapper: model.fileInfo.metadata?.tokenizer?.chat_template ? "from the GGUF" : "default", answers}));
await llama.dispose();
