// A chat page built on the AI SDK's `useChat` (@ai-sdk/react) with the `ai` package's DefaultChatTransport:
// no transport code of its own. The server speaks the AI SDK's UI message stream (POST /api/chat), keeps the
// stream open while a purchase waits for the approval on the user's device (a `data-approval` part says what
// to approve and where), and resumes a waiting reply after a reload (`resume: true`).
//
// Build: npm ci && npm run build; serve: AGENTRT_URL=http://127.0.0.1:8000 npm run serve
// Open http://127.0.0.1:3000/?user=alice (a `thread` parameter reopens a thread).
import { useChat } from "@ai-sdk/react";
import { DefaultChatTransport, lastAssistantMessageIsCompleteWithApprovalResponses } from "ai";
import { useEffect, useMemo, useState } from "react";
import { createRoot } from "react-dom/client";

async function signIn(user) {
  // the dev authorization server's demo sign-in (a real app signs in with its identity provider)
  const response = await fetch("/dev/login", {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ username: user }),
  });
  if (!response.ok) throw new Error(`sign-in failed: ${response.status}`);
  return (await response.json()).access_token;
}

async function storedMessages(threadId, token) {
  const response = await fetch(`/api/chat/${threadId}/messages`, { headers: { Authorization: `Bearer ${token}` } });
  if (response.status === 404) return []; // a new chat: the first message creates the thread
  if (!response.ok) throw new Error(`history: ${response.status}`);
  return (await response.json()).messages;
}

function App() {
  const [session, setSession] = useState(null);
  const [failure, setFailure] = useState(null);
  useEffect(() => {
    (async () => {
      const params = new URLSearchParams(location.search);
      const threadId = params.get("thread") || `ui-${crypto.randomUUID().slice(0, 12)}`;
      params.set("thread", threadId);
      history.replaceState(null, "", `?${params}`);
      const token = await signIn(params.get("user") || "alice");
      setSession({ token, threadId, initial: await storedMessages(threadId, token) });
    })().catch((error) => setFailure(String(error)));
  }, []);
  if (failure) return <p id="error">{failure}</p>;
  if (!session) return <p>Signing in…</p>;
  return <Chat {...session} />;
}

function Chat({ token, threadId, initial }) {
  const headers = { Authorization: `Bearer ${token}` };
  const transport = useMemo(() => new DefaultChatTransport({ api: "/api/chat", headers }), [token]);
  const { messages, sendMessage, addToolApprovalResponse, status, error } = useChat({
    id: threadId,
    messages: initial,
    resume: true,
    transport,
    sendAutomaticallyWhen: lastAssistantMessageIsCompleteWithApprovalResponses,
  });
  const [input, setInput] = useState("");
  // the server's controls: stop the answer under way, withdraw a purchase waiting for approval
  const stop = () => fetch(`/threads/${threadId}/stop`, { method: "POST", headers });
  const withdraw = (callId) => fetch(`/threads/${threadId}/interrupts/${callId}`, { method: "DELETE", headers });
  const answer = (id, approved) => addToolApprovalResponse({ id, approved });

  return (
    <main>
      <h1>
        Thread <code id="thread-id">{threadId}</code> <small id="status">{status}</small>
      </h1>
      {messages.map((message) => (
        <div key={message.id} className={`message ${message.role}`}>
          {message.parts.map((part, index) => (
            <Part key={index} part={part} answer={answer} withdraw={withdraw} />
          ))}
        </div>
      ))}
      {error && <p id="error">{error.message}</p>}
      <form
        onSubmit={(event) => {
          event.preventDefault();
          if (input.trim()) sendMessage({ text: input });
          setInput("");
        }}
      >
        <input id="message-input" value={input} onChange={(event) => setInput(event.target.value)} />
        <button id="send">Send</button>
        <button id="stop" type="button" onClick={stop}>
          Stop
        </button>
      </form>
    </main>
  );
}

function Part({ part, answer, withdraw }) {
  if (part.type === "text") return <p className="text">{part.text}</p>;
  if (part.type === "data-approval") {
    const { bindingMessage, expiresAt, approvalUrl, toolCallId, status } = part.data;
    if (status !== "pending") return <div className="approval-card done">Decided: {bindingMessage}</div>;
    return (
      <div className="approval-card pending">
        Approve <b className="binding">{bindingMessage}</b> on your device
        {approvalUrl && (
          <>
            {" "}(<a href={approvalUrl} target="_blank" rel="noreferrer">approval page</a>)
          </>
        )}{" "}
        before {new Date(expiresAt).toLocaleTimeString()}.{" "}
        <button className="withdraw" onClick={() => withdraw(toolCallId)}>
          Withdraw
        </button>
      </div>
    );
  }
  if (!part.type.startsWith("tool-")) return null;
  const name = part.type.slice("tool-".length);
  if (part.state === "approval-requested") {
    return (
      <div className="confirm" data-tool={name}>
        {name} {JSON.stringify(part.input)}?{" "}
        <button className="approve" onClick={() => answer(part.approval.id, true)}>
          Approve
        </button>{" "}
        <button className="deny" onClick={() => answer(part.approval.id, false)}>
          Deny
        </button>
      </div>
    );
  }
  const shown = {
    "output-available": String(part.output),
    "output-error": part.errorText,
    "output-denied": "denied",
  }[part.state];
  return (
    <div className={`tool ${part.state}`} data-tool={name}>
      {name}: {shown ?? "…"}
    </div>
  );
}

createRoot(document.getElementById("root")).render(<App />);
