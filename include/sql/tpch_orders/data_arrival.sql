-- Data-arrival check for the sensor: true once orders dated on or after the first day of the
-- run's data interval are loaded (the training window ends with that interval).
SELECT COUNT(*) > 0
FROM {{ source.catalog }}.{{ source.schema }}.orders
WHERE orderdate >= DATE '{{ data_interval_start | ds }}'
