// The example page's script: one chat over the relay's WebSocket with RelayClient. Messages
// typed while the relay is away wait in sessionStorage and go out once it is back; the
// answer streams in; a tool call that needs approval asks with confirm().

import { ConnectionStopped, RelayClient, Reset, TurnCancelled, TurnFailed } from "../index.js";

const $ = (id) => document.getElementById(id);
let client = null;
let chat = null;

function line(kind, text) {
  const li = document.createElement("li");
  li.className = kind;
  li.textContent = text;
  $("messages").append(li);
  return li;
}

async function follow(events) {
  try {
    for await (const item of events) {
      if (item instanceof Reset) {
        line("notice", "Some events were missed while away; reload the chat to see everything.");
      } else if (item.type === "tool.approval_requested") {
        const { approval_id, tool, arguments: args } = item.data;
        const yes = confirm(`The agent asks to run ${tool} with ${JSON.stringify(args)}. Allow it?`);
        chat.approve(approval_id, yes).catch((err) => line("notice", `approval: ${err.message}`));
      }
    }
  } catch (err) {
    line("notice", err instanceof ConnectionStopped ? `stopped: ${err.message} (${err.code})` : String(err));
  }
}

async function send(text) {
  const mine = line("user waiting", text);
  let answer;
  try {
    answer = await chat.send(text); // queued while offline; resolves once the relay stored it
  } catch (err) {
    mine.classList.remove("waiting");
    line("notice", `not sent: ${err.message}`);
    return;
  }
  mine.classList.remove("waiting");
  const reply = line("assistant", "");
  try {
    for await (const delta of answer) reply.textContent += delta.text;
  } catch (err) {
    if (err instanceof TurnFailed || err instanceof TurnCancelled) line("notice", err.message);
    else throw err;
  }
}

$("connect").addEventListener("submit", async (e) => {
  e.preventDefault();
  const form = new FormData(e.target);
  client?.close();
  client = new RelayClient({
    url: String(form.get("url")),
    token: String(form.get("token")),
    storage: sessionStorage,
  });
  client.on("state", ({ state, retryInMs, code }) => {
    $("state").textContent = `${state}${retryInMs ? `, next try in ${retryInMs} ms` : ""}${code ? ` (close ${code})` : ""}`;
  });
  try {
    await client.connect();
  } catch (err) {
    $("state").textContent = `refused: ${err.message}`;
    return;
  }
  chat = client.chat(String(form.get("chat")));
  follow(await chat.events());
  $("compose").hidden = false;
});

$("compose").addEventListener("submit", (e) => {
  e.preventDefault();
  const input = e.target.elements.namedItem("text");
  send(input.value);
  input.value = "";
});

$("cancel").addEventListener("click", () => {
  chat?.cancel().catch((err) => line("notice", `cancel: ${err.message}`));
});
