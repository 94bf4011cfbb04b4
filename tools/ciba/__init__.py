"""The CIBA library: a tool call that waits for its user's approval on another device, then runs once.

Apart from any demo (the stock tools are `demo/`), and importing nothing of chat or agents:

- the flow of one tool call (`confirmation`: `with_async_user_confirmation` and the steps of a call;
  `provider`: the request, its checks and their answers; `resends`: asking again, within a cap;
  `options`: its options and the pending record's vocabulary; `probe`: a sleeping thread's request
  checked by the alarm scheduler, and the hand-off of its answer);
- the client (`client`; `sender`: retries where they are safe; `wire`: requests checked, answers parsed;
  `types`: the protocol's vocabulary; `ping`: notification tokens);
- what the flow keeps and raises (`credential_store`, `agent_credential_store`: encrypted, with TTLs;
  `credentials_context`: the approved token of the call now running; `interrupts`; `metrics`).

An agent author imports from `tools` (`from tools import with_async_user_confirmation, get_ciba_credentials`).
"""
