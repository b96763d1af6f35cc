-- Data-arrival check for the sensor: true once orders dated on or after the run date are loaded.
SELECT COUNT(*) > 0
FROM {{ source.catalog }}.{{ source.schema }}.orders
WHERE orderdate >= DATE '{{ ds }}'
