-- The catalog schema (PostgreSQL) as the migrations create it, read back from pg_catalog.
-- Generated; do not edit:
--   python tests/postgres.py schema > schema/registry.postgres.sql

CREATE TABLE alembic_version (
    version_num character varying(32) NOT NULL,
    CONSTRAINT alembic_version_pkc PRIMARY KEY (version_num)
);

CREATE TABLE aliases (
    name character varying NOT NULL,
    alias character varying NOT NULL,
    expert_id integer NOT NULL,
    CONSTRAINT aliases_expert_id_fkey FOREIGN KEY (expert_id) REFERENCES experts(id) ON DELETE CASCADE,
    CONSTRAINT aliases_pkey PRIMARY KEY (name, alias)
);

CREATE TABLE base_metrics (
    base_model character varying NOT NULL,
    base_revision character varying,
    task character varying NOT NULL,
    metric character varying NOT NULL,
    value double precision NOT NULL,
    evaluated_at timestamp with time zone NOT NULL,
    CONSTRAINT base_metrics_pkey PRIMARY KEY (base_model, task, metric)
);

CREATE TABLE eval_examples (
    evaluation_id integer NOT NULL,
    idx integer NOT NULL,
    key character varying NOT NULL,
    value double precision NOT NULL,
    metrics json,
    gold_logprob double precision,
    text character varying NOT NULL,
    CONSTRAINT eval_examples_evaluation_id_fkey FOREIGN KEY (evaluation_id) REFERENCES evaluations(id) ON DELETE CASCADE,
    CONSTRAINT eval_examples_pkey PRIMARY KEY (evaluation_id, idx)
);

CREATE TABLE evaluations (
    id integer NOT NULL DEFAULT nextval('evaluations_id_seq'::regclass),
    expert_id integer,
    base_model character varying,
    base_revision character varying,
    task character varying NOT NULL,
    split character varying NOT NULL,
    metric character varying NOT NULL,
    n integer NOT NULL,
    settings json,
    created_at timestamp with time zone NOT NULL,
    CONSTRAINT ck_evaluations_one_subject CHECK (((expert_id IS NULL) <> (base_model IS NULL))),
    CONSTRAINT evaluations_expert_id_fkey FOREIGN KEY (expert_id) REFERENCES experts(id) ON DELETE CASCADE,
    CONSTRAINT evaluations_pkey PRIMARY KEY (id),
    CONSTRAINT uq_evaluations_base UNIQUE (base_model, task, split),
    CONSTRAINT uq_evaluations_expert UNIQUE (expert_id, task, split)
);

CREATE TABLE expert_names (
    name character varying NOT NULL,
    last_version integer NOT NULL,
    CONSTRAINT expert_names_pkey PRIMARY KEY (name)
);

CREATE TABLE expert_tags (
    expert_id integer NOT NULL,
    tag character varying NOT NULL,
    CONSTRAINT expert_tags_expert_id_fkey FOREIGN KEY (expert_id) REFERENCES experts(id) ON DELETE CASCADE,
    CONSTRAINT expert_tags_pkey PRIMARY KEY (expert_id, tag)
);

CREATE TABLE expert_tasks (
    expert_id integer NOT NULL,
    task character varying NOT NULL,
    CONSTRAINT expert_tasks_expert_id_fkey FOREIGN KEY (expert_id) REFERENCES experts(id) ON DELETE CASCADE,
    CONSTRAINT expert_tasks_pkey PRIMARY KEY (expert_id, task)
);

CREATE TABLE experts (
    id integer NOT NULL DEFAULT nextval('experts_id_seq'::regclass),
    name character varying NOT NULL,
    version integer NOT NULL,
    kind character varying NOT NULL,
    task character varying NOT NULL,
    base_model character varying NOT NULL,
    base_revision character varying,
    targets character varying,
    keep_ratio double precision,
    nnz bigint NOT NULL,
    bytes bigint NOT NULL,
    sha256 character varying NOT NULL,
    blob character varying NOT NULL,
    created_at timestamp with time zone NOT NULL,
    config json,
    description character varying,
    hub_repo character varying,
    hub_commit character varying,
    value_dtype character varying,
    CONSTRAINT experts_pkey PRIMARY KEY (id),
    CONSTRAINT uq_experts_name_version UNIQUE (name, version)
);

CREATE TABLE lineage (
    child_id integer NOT NULL,
    parent character varying NOT NULL,
    role character varying,
    weight double precision,
    CONSTRAINT lineage_child_id_fkey FOREIGN KEY (child_id) REFERENCES experts(id) ON DELETE CASCADE,
    CONSTRAINT lineage_pkey PRIMARY KEY (child_id, parent)
);

CREATE TABLE metrics (
    expert_id integer NOT NULL,
    metric character varying NOT NULL,
    task character varying NOT NULL,
    value double precision NOT NULL,
    CONSTRAINT metrics_expert_id_fkey FOREIGN KEY (expert_id) REFERENCES experts(id) ON DELETE CASCADE,
    CONSTRAINT metrics_pkey PRIMARY KEY (expert_id, metric, task)
);

CREATE TABLE tasks (
    name character varying NOT NULL,
    description character varying,
    tags json,
    data_source character varying,
    sizes json,
    created_at timestamp with time zone NOT NULL,
    category character varying,
    CONSTRAINT tasks_pkey PRIMARY KEY (name)
);

CREATE INDEX ix_expert_tags_tag ON public.expert_tags USING btree (tag, expert_id);

CREATE INDEX ix_expert_tasks_task ON public.expert_tasks USING btree (task, expert_id);

CREATE INDEX ix_experts_base_model ON public.experts USING btree (base_model, name, version);

CREATE INDEX ix_experts_created_at ON public.experts USING btree (created_at);

CREATE INDEX ix_experts_kind ON public.experts USING btree (kind, name, version);

CREATE INDEX ix_experts_sha256 ON public.experts USING btree (sha256);

CREATE INDEX ix_experts_task ON public.experts USING btree (task, name, version);

CREATE INDEX ix_lineage_parent ON public.lineage USING btree (parent);

CREATE INDEX ix_metrics_expert_metric_value ON public.metrics USING btree (expert_id, metric, value);

CREATE INDEX ix_metrics_metric_value ON public.metrics USING btree (metric, value, expert_id);
