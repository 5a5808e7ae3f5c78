-- Schema and a daily report for the weather station.
CREATE TABLE sensors (
    id          VARCHAR(16) PRIMARY KEY,
    kind        VARCHAR(32) NOT NULL,
    unit        VARCHAR(16) NOT NULL,
    enabled     BOOLEAN NOT NULL DEFAULT TRUE
);

CREATE TABLE readings (
    sensor_id   VARCHAR(16) NOT NULL REFERENCES sensors(id),
    taken_at    TIMESTAMP NOT NULL,
    value       DOUBLE PRECISION NOT NULL,
    PRIMARY KEY (sensor_id, taken_at)
);

CREATE INDEX readings_taken_at ON readings (taken_at);

INSERT INTO sensors (id, kind, unit) VALUES
    ('t1', 'temperature', 'celsius'),
    ('h1', 'humidity', 'percent');

SELECT s.kind,
       DATE(r.taken_at) AS day,
       COUNT(*) AS n,
       AVG(r.value) AS mean,
       MAX(r.value) AS peak
FROM readings r
JOIN sensors s ON s.id = r.sensor_id
WHERE r.taken_at >= CURRENT_DATE - INTERVAL '7 days'
GROUP BY s.kind, DATE(r.taken_at)
ORDER BY day DESC, s.kind;
