// The live page: follows /live/events (server-sent events) and draws each call's lines as they come.
(function () {
  const calls = new Map();
  const box = document.getElementById("live-calls");
  const status = document.getElementById("live-status");
  const csrf = JSON.parse(document.body.getAttribute("hx-headers"))["X-CSRF-Token"];

  function card(event) {
    if (calls.has(event.call_id)) return calls.get(event.call_id);
    const node = document.getElementById("live-call").content.firstElementChild.cloneNode(true);
    node.id = "live-" + event.call_id;
    node.querySelector(".call-id").textContent = event.call_id.slice(0, 8);
    node.querySelector(".channel").textContent = event.channel || "";
    node.querySelector(".take-over").addEventListener("click", async () => {
      const answer = await fetch("/calls/" + event.call_id + "/take-over",
        {method: "POST", headers: {"X-CSRF-Token": csrf}});
      node.querySelector(".state").textContent = answer.ok ? "handing over…" : "could not take over";
    });
    box.prepend(node);
    calls.set(event.call_id, node);
    return node;
  }

  function line(node, role, text, final) {
    const lines = node.querySelector(".lines");
    let last = lines.lastElementChild;
    // a caller's partial transcript is replaced by the next partial or its final line
    if (!(last && last.dataset.partial === "1" && last.dataset.role === role)) {
      last = document.createElement("div");
      lines.append(last);
    }
    last.dataset.role = role;
    last.dataset.partial = final ? "0" : "1";
    last.className = "line " + role + (final ? "" : " muted");
    last.textContent = (role === "caller" ? "Caller: " : "Agent: ") + text;
  }

  const source = new EventSource("/live/events");
  source.onopen = () => { status.textContent = "Following live calls."; };
  source.onerror = () => { status.textContent = "Reconnecting…"; };
  source.onmessage = (message) => {
    const event = JSON.parse(message.data);
    const node = card(event);
    if (event.type === "transcript") line(node, event.role, event.text, event.final);
    else if (event.type === "barge_in") {
      const count = node.querySelector(".barge-ins");
      count.textContent = String(Number(count.textContent) + 1);
    } else if (event.type === "transfer") node.querySelector(".state").textContent = "handed to a person";
    else if (event.type === "call_ended") {
      node.querySelector(".state").textContent = "ended";
      node.querySelector(".take-over").remove();
      node.classList.add("ended");
    }
  };
})();
