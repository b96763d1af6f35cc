-- Rows to score: one row per order placed in the lookback window that ends at the run's data
-- interval end (exclusive). The key column comes first, then the features in the order of
-- dataset.feature_columns (the batch transform drops the key before the model and joins it
-- back to each prediction). No label: these orders are scored, not learned from.
SELECT
    o.orderkey AS orderkey,
    SUM(l.extendedprice) AS total_extended_price,
    AVG(l.discount) AS avg_discount,
    SUM(l.quantity) AS total_quantity,
    COUNT(*) AS lineitem_count,
    SUM(l.extendedprice * (1 - l.discount) * l.tax) AS total_payable_tax
FROM {{ source.catalog }}.{{ source.schema }}.orders AS o
JOIN {{ source.catalog }}.{{ source.schema }}.lineitem AS l
    ON l.orderkey = o.orderkey
WHERE o.orderdate >= DATE '{{ window_start(data_interval_end) }}'
    AND o.orderdate < DATE '{{ data_interval_end | ds }}'
GROUP BY o.orderkey
ORDER BY o.orderkey
