-- The system-wide incident evaluator is elected like a datacenter's leader (an advisory
-- lock on a dedicated connection, see src/leadership.rs), in a scope of its own: one
-- row per term, the term number being the evaluator's fencing token.
CREATE TABLE evaluator_terms (
    term        bigint PRIMARY KEY,
    agent_id    bigint REFERENCES agents (id) ON DELETE SET NULL,
    acquired_at timestamptz NOT NULL DEFAULT now(),
    released_at timestamptz
);

CREATE INDEX evaluator_terms_agent_id_idx ON evaluator_terms (agent_id);
