// Shows a prompt-optim node's text result (scores, rewrites, reports) on the node after a run.
// The executor sends it as the UI output "text"; the stock editor does not draw that by itself.
// Workflows come from strangers, so the text goes into a read-only textarea's value: never parsed as HTML.
import { app } from "../../scripts/app.js";

const WIDGET = "prompt_optim_result";

function resultWidget(node) {
  let widget = node.widgets?.find((w) => w.name === WIDGET);
  if (widget) return widget;
  const { ComfyWidgets } = window.comfyAPI.widgets;
  widget = ComfyWidgets.STRING(node, WIDGET, ["STRING", { multiline: true }], app).widget;
  const area = widget.element ?? widget.inputEl;
  area.readOnly = true;
  area.placeholder = "result of the last run";
  widget.serialize = false; // not saved in the workflow's widget values
  widget.options.serialize = false; // not sent to the server as an input
  return widget;
}

function growToFit(node) {
  const wanted = node.computeSize();
  node.setSize([Math.max(wanted[0], node.size[0]), Math.max(wanted[1], node.size[1])]);
  node.setDirtyCanvas?.(true, true);
}

export function showResult(node, text) {
  const widget = resultWidget(node);
  widget.value = Array.isArray(text) ? text.join("\n") : String(text);
  requestAnimationFrame(() => growToFit(node));
}

app.registerExtension({
  name: "PromptOptim.ShowResults",
  async beforeRegisterNodeDef(nodeType, nodeData) {
    if (!nodeData.name.startsWith("PromptOptim_")) return;
    const onExecuted = nodeType.prototype.onExecuted;
    nodeType.prototype.onExecuted = function (message) {
      onExecuted?.apply(this, arguments);
      if (message?.text?.length) showResult(this, message.text);
    };
  },
});
