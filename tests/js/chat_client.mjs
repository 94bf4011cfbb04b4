// A chat client as a frontend built on the AI SDK has it: the `ai` package's DefaultChatTransport and the
// `Chat` class that `useChat` (@ai-sdk/react) wraps, with no transport code of its own. The Python tests
// (tests/test_ai_sdk.py) run it against the server and read what it prints: one JSON object per line.
//
//   node chat_client.mjs <scenario> <api base URL> <bearer token> <thread id> [args...]
//
//   stream <text>              transport.sendMessages + readUIMessageStream: each message state, then the last
//   chat <text>                Chat.sendMessage; prints {"pending": ...} when a purchase waits on the phone
//   confirm <text> <yes|no>    Chat.sendMessage, then addToolApprovalResponse (sent by sendAutomaticallyWhen)
//   resume                     a new Chat with the stored history, resumeStream() (useChat's `resume: true`)
//   history                    GET /api/chat/{id}/messages through validateUIMessages
import { Chat } from "@ai-sdk/react";
import {
  DefaultChatTransport,
  lastAssistantMessageIsCompleteWithApprovalResponses,
  readUIMessageStream,
  validateUIMessages,
} from "ai";

const [scenario, base, token, threadId, ...args] = process.argv.slice(2);
const headers = { Authorization: `Bearer ${token}` };
const transport = new DefaultChatTransport({ api: `${base}/api/chat`, headers });
const say = (object) => process.stdout.write(JSON.stringify(object) + "\n");

function newChat(messages = []) {
  return new Chat({
    id: threadId,
    messages,
    transport,
    sendAutomaticallyWhen: lastAssistantMessageIsCompleteWithApprovalResponses,
    onError: (error) => say({ error: String(error && error.message ? error.message : error) }),
  });
}

async function until(what, predicate, seconds = 90) {
  const deadline = Date.now() + seconds * 1000;
  while (!predicate()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
}

function watchForApproval(chat) {
  let told = false;
  const timer = setInterval(() => {
    const parts = chat.lastMessage ? chat.lastMessage.parts : [];
    const pending = parts.find((p) => p.type === "data-approval" && p.data.status === "pending");
    if (pending && !told) {
      told = true;
      const tool = parts.find((p) => p.toolCallId === pending.id);
      say({ pending: pending.data, tool, status: chat.status });
    }
  }, 50);
  return () => clearInterval(timer);
}

async function history() {
  const response = await fetch(`${base}/api/chat/${threadId}/messages`, { headers });
  if (response.status === 404) return []; // a new chat: the first message creates the thread
  if (!response.ok) throw new Error(`history: ${response.status} ${await response.text()}`);
  const { messages } = await response.json();
  return validateUIMessages({ messages });
}

const scenarios = {
  async stream(text) {
    const user = { id: `u-${Date.now()}`, role: "user", parts: [{ type: "text", text }] };
    const chunks = await transport.sendMessages({
      chatId: threadId,
      messages: [user],
      trigger: "submit-message",
      messageId: undefined,
      abortSignal: undefined,
    });
    let last;
    for await (const message of readUIMessageStream({ stream: chunks })) {
      last = message;
    }
    say({ final: last, user: user.id });
  },

  async chat(text) {
    const chat = newChat(await history());
    const stop = watchForApproval(chat);
    await chat.sendMessage({ text });
    await until("the reply", () => chat.status === "ready" || chat.status === "error");
    stop();
    say({ final: chat.lastMessage, status: chat.status, messages: chat.messages.length });
  },

  async confirm(text, answer) {
    const chat = newChat(await history());
    await chat.sendMessage({ text });
    await until("the reply", () => chat.status === "ready");
    const tool = chat.lastMessage.parts.find((p) => p.state === "approval-requested");
    say({ asked: tool });
    await chat.addToolApprovalResponse({ id: tool.approval.id, approved: answer === "yes" });
    const settled = () => {
      const part = chat.lastMessage.parts.find((p) => p.toolCallId === tool.toolCallId);
      return chat.status === "ready" && ["output-available", "output-denied", "output-error"].includes(part.state);
    };
    await until("the answer", () => settled() || chat.status === "error");
    say({ final: chat.lastMessage, status: chat.status });
  },

  async resume() {
    const chat = newChat(await history());
    const stop = watchForApproval(chat);
    await chat.resumeStream();
    await until("the resumed reply", () => chat.status === "ready" || chat.status === "error");
    stop();
    say({ final: chat.lastMessage, status: chat.status });
  },

  async history() {
    say({ history: await history() });
  },
};

try {
  await scenarios[scenario](...args);
  process.exit(0);
} catch (error) {
  say({ failed: String(error && error.stack ? error.stack : error) });
  process.exit(1);
}
