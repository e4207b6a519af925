// Side by side: one Stop button per lane, usable while both lanes stream (Chainlit disables its
// own action buttons while a task runs). Props (from the server): lanes [{id, name, state}],
// stop (the button's label). A button calls the app's "stop_lane" action for its lane.
export default function LaneControls() {
  const lanes = props.lanes || [];
  return (
    <div className="flex flex-wrap gap-2" data-testid="lane-controls">
      {lanes.map((lane) => (
        <button
          key={lane.id}
          type="button"
          className="rounded-md border px-3 py-1 text-sm disabled:opacity-50"
          data-lane={lane.id}
          data-state={lane.state}
          disabled={lane.state !== "streaming"}
          onClick={() => callAction({ name: "stop_lane", payload: { lane: lane.id } })}
        >
          {lane.state === "streaming" ? `${props.stop} ${lane.name}` : `${lane.name}: ${lane.state}`}
        </button>
      ))}
    </div>
  );
}
