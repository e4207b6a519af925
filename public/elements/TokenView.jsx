// Token boundaries: the answer as the provider cut it, one shaded span per token (or chunk).
// Props (injected by Chainlit): tokens (list of strings), usage_tokens (number or null).
// Text goes in as React text children, never as HTML, so model output cannot run here.
export default function TokenView() {
  const tokens = props.tokens || [];
  const shades = ["bg-primary/15", "bg-muted"];
  return (
    <div className="w-full">
      <div
        className="font-mono text-sm leading-7 whitespace-pre-wrap break-words rounded-md border p-3"
        data-testid="token-view"
      >
        {tokens.map((token, index) => (
          <span
            key={index}
            className={`${shades[index % 2]} rounded-sm`}
            title={`token ${index + 1}: ${JSON.stringify(token)}`}
            data-token-index={index}
          >
            {token}
          </span>
        ))}
      </div>
      <div className="text-xs text-muted-foreground mt-1">
        {tokens.length} tokens
        {props.usage_tokens != null && props.usage_tokens !== tokens.length
          ? ` (the provider billed ${props.usage_tokens})`
          : ""}
      </div>
    </div>
  );
}
