-- The catalog schema (SQLite) as the migrations create it. Generated; do not edit:
--   python -m hubtool.registry.schema_dump > schema/registry.sql

CREATE TABLE alembic_version (
	version_num VARCHAR(32) NOT NULL,
	CONSTRAINT alembic_version_pkc PRIMARY KEY (version_num)
);

CREATE TABLE aliases (
	name VARCHAR NOT NULL,
	alias VARCHAR NOT NULL,
	expert_id INTEGER NOT NULL,
	PRIMARY KEY (name, alias),
	FOREIGN KEY(expert_id) REFERENCES experts (id) ON DELETE CASCADE
);

CREATE TABLE base_metrics (
	base_model VARCHAR NOT NULL,
	base_revision VARCHAR,
	task VARCHAR NOT NULL,
	metric VARCHAR NOT NULL,
	value FLOAT NOT NULL,
	evaluated_at DATETIME NOT NULL,
	PRIMARY KEY (base_model, task, metric)
);

CREATE TABLE eval_examples (
	evaluation_id INTEGER NOT NULL,
	idx INTEGER NOT NULL,
	"key" VARCHAR NOT NULL,
	value FLOAT NOT NULL,
	metrics JSON,
	gold_logprob FLOAT,
	text VARCHAR NOT NULL,
	PRIMARY KEY (evaluation_id, idx),
	FOREIGN KEY(evaluation_id) REFERENCES evaluations (id) ON DELETE CASCADE
);

CREATE TABLE evaluations (
	id INTEGER NOT NULL,
	expert_id INTEGER,
	base_model VARCHAR,
	base_revision VARCHAR,
	task VARCHAR NOT NULL,
	split VARCHAR NOT NULL,
	metric VARCHAR NOT NULL,
	n INTEGER NOT NULL,
	settings JSON,
	created_at DATETIME NOT NULL,
	PRIMARY KEY (id),
	CONSTRAINT ck_evaluations_one_subject CHECK ((expert_id IS NULL) <> (base_model IS NULL)),
	CONSTRAINT uq_evaluations_expert UNIQUE (expert_id, task, split),
	CONSTRAINT uq_evaluations_base UNIQUE (base_model, task, split),
	FOREIGN KEY(expert_id) REFERENCES experts (id) ON DELETE CASCADE
);

CREATE TABLE expert_names (
	name VARCHAR NOT NULL,
	last_version INTEGER NOT NULL,
	PRIMARY KEY (name)
);

CREATE TABLE expert_tags (
	expert_id INTEGER NOT NULL,
	tag VARCHAR NOT NULL,
	PRIMARY KEY (expert_id, tag),
	FOREIGN KEY(expert_id) REFERENCES experts (id) ON DELETE CASCADE
);

CREATE TABLE expert_tasks (
	expert_id INTEGER NOT NULL,
	task VARCHAR NOT NULL,
	PRIMARY KEY (expert_id, task),
	FOREIGN KEY(expert_id) REFERENCES experts (id) ON DELETE CASCADE
);

CREATE TABLE experts (
	id INTEGER NOT NULL,
	name VARCHAR NOT NULL,
	version INTEGER NOT NULL,
	kind VARCHAR NOT NULL,
	task VARCHAR NOT NULL,
	base_model VARCHAR NOT NULL,
	base_revision VARCHAR,
	targets VARCHAR,
	keep_ratio FLOAT,
	nnz INTEGER NOT NULL,
	bytes INTEGER NOT NULL,
	sha256 VARCHAR NOT NULL,
	blob VARCHAR NOT NULL,
	created_at DATETIME NOT NULL,
	config JSON,
	description VARCHAR,
	hub_repo VARCHAR,
	hub_commit VARCHAR, value_dtype VARCHAR,
	PRIMARY KEY (id),
	CONSTRAINT uq_experts_name_version UNIQUE (name, version)
);

CREATE TABLE lineage (
	child_id INTEGER NOT NULL,
	parent VARCHAR NOT NULL,
	role VARCHAR,
	weight FLOAT,
	PRIMARY KEY (child_id, parent),
	FOREIGN KEY(child_id) REFERENCES experts (id) ON DELETE CASCADE
);

CREATE TABLE metrics (
	expert_id INTEGER NOT NULL,
	metric VARCHAR NOT NULL,
	task VARCHAR NOT NULL,
	value FLOAT NOT NULL,
	PRIMARY KEY (expert_id, metric, task),
	FOREIGN KEY(expert_id) REFERENCES experts (id) ON DELETE CASCADE
);

CREATE TABLE tasks (
	name VARCHAR NOT NULL,
	description VARCHAR,
	tags JSON,
	data_source VARCHAR,
	sizes JSON,
	created_at DATETIME NOT NULL, category VARCHAR,
	PRIMARY KEY (name)
);

CREATE INDEX ix_expert_tags_tag ON expert_tags (tag, expert_id);

CREATE INDEX ix_expert_tasks_task ON expert_tasks (task, expert_id);

CREATE INDEX ix_experts_base_model ON experts (base_model, name, version);

CREATE INDEX ix_experts_created_at ON experts (created_at);

CREATE INDEX ix_experts_kind ON experts (kind, name, version);

CREATE INDEX ix_experts_sha256 ON experts (sha256);

CREATE INDEX ix_experts_task ON experts (task, name, version);

CREATE INDEX ix_lineage_parent ON lineage (parent);

CREATE INDEX ix_metrics_expert_metric_value ON metrics (expert_id, metric, value);

CREATE INDEX ix_metrics_metric_value ON metrics (metric, value, expert_id);
