"""An OpenAI-compatible, deterministic, rule-based offline model: "offline-demo-model".

No weights, no network: it reads the conversation and the `tools` offered and answers the way a tool-using
LLM would in the stock demo, so the agent always speaks through the `openai` SDK even with no OpenAI key.

- Last message from the user:
  - a purchase ("buy 100 shares of MSFT", "Buy 10 MSFT at 30", "purchase 5 aapl", "buy 2 shares of
    Microsoft", "buy 10 MSFT and 5 AAPL") -> one `buy_stock` tool call per item, `{"ticker", "quantity"
    [, "price"]}` (only if `buy_stock` was offered);
  - a watchlist request ("watch MSFT", "add AAPL to my watchlist") -> `watch_stock` calls, which the user
    confirms in the chat; "show my watchlist" -> `get_watchlist`;
  - a price question ("what is MSFT trading at", "price of AAPL", "how much is nvda", "quote for TSLA")
    -> `get_stock_price` calls (only if offered);
  - `/<tool> {"arg": ...}` -> one call of any offered tool with those arguments (how an agent of your own,
    with tools this model has no rules for, is driven offline);
  - anything else -> a short friendly answer saying what it can do.
- Last message(s) tool results -> a sentence using them ("Done: Purchased 100 shares of MSFT at 25.0.",
  "The purchase was not made: The user has denied the request.").

Endpoints: `POST /v1/chat/completions` (non-streaming and `stream: true` SSE in the exact OpenAI chunk format,
tool calls streamed as index/id/name then argument fragments, `data: [DONE]` last; `stream_options.
include_usage` adds the usage chunk), `GET /v1/models`, `GET /v1/models/{id}`, `GET /v1/stats` (ready flag
and request counters for tests). Errors are OpenAI-style: `{"error": {"message", "type", "param", "code"}}`.

Modules, each importing only those above it:

- `phrases`: reading the user's words (tickers, company names, quantities, intents);
- `replies`: `plan_reply`, the scripted "model" that decides on text or tool calls;
- `completions`: the model's identity and the non-streamed `chat.completion` object, with its usage;
- `streaming`: the same reply as `chat.completion.chunk`s, framed as server-sent events;
- `errors`: OpenAI-style error answers;
- `chat_request`: reading and validating a chat-completions request body;
- `routes`: the HTTP handlers, which find their counters on `request.app.state`;
- `server`: `create_offline_model_app` and `OfflineModelServer`, which run it on 127.0.0.1.

`devservers.offline_model` re-exports the public names.
"""
