//! The export, REST and `_typeFilter` end-to-end tests again, with every server keeping its
//! resources, jobs and clients in PostgreSQL (a real server this test process starts, a new
//! database per server), so both backends pass the same suite.

use crate::{bundles, common::on_postgres, crud, export, hardening, real_data, typefilter};

#[test]
fn the_export_tests_pass_on_postgres() {
    on_postgres(&[
        ("export::a_system_export_of_medium_returns_every_resource_exactly_once", export::a_system_export_of_medium_returns_every_resource_exactly_once),
        ("export::since_returns_exactly_the_changes_and_lists_the_deletions", export::since_returns_exactly_the_changes_and_lists_the_deletions),
        ("export::patient_and_group_exports_hold_exactly_the_compartments_and_their_references", export::patient_and_group_exports_hold_exactly_the_compartments_and_their_references),
        ("export::an_export_sees_the_versions_current_at_its_transaction_time", export::an_export_sees_the_versions_current_at_its_transaction_time),
        ("export::bad_kickoffs_get_an_operation_outcome", export::bad_kickoffs_get_an_operation_outcome),
        ("export::status_cancel_files_and_limits_follow_the_async_pattern", export::status_cancel_files_and_limits_follow_the_async_pattern),
        ("export::a_full_queue_answers_429_and_expired_files_are_swept", export::a_full_queue_answers_429_and_expired_files_are_swept),
        ("export::until_returns_the_versions_current_at_that_instant", export::until_returns_the_versions_current_at_that_instant),
        ("export::separate_export_status_moves_the_job_state_into_a_header", export::separate_export_status_moves_the_job_state_into_a_header),
        ("export::partial_manifests_chain_every_file_once_and_never_change", export::partial_manifests_chain_every_file_once_and_never_change),
        ("export::provenance_follows_k17_and_include_associated_data", export::provenance_follows_k17_and_include_associated_data),
        ("export::elements_trim_to_the_listed_and_mandatory_elements_byte_exact", export::elements_trim_to_the_listed_and_mandatory_elements_byte_exact),
        ("export::organize_output_by_patient_puts_each_compartment_resource_in_its_patients_block_once", export::organize_output_by_patient_puts_each_compartment_resource_in_its_patients_block_once),
    ]);
}

#[test]
fn the_rest_and_bundle_tests_pass_on_postgres() {
    on_postgres(&[
        ("crud::metadata_describes_a_fhir_r4_server", crud::metadata_describes_a_fhir_r4_server),
        (
            "crud::a_resource_lives_through_create_update_delete_and_history",
            crud::a_resource_lives_through_create_update_delete_and_history,
        ),
        (
            "crud::put_with_a_client_id_creates_and_prefer_minimal_returns_no_body",
            crud::put_with_a_client_id_creates_and_prefer_minimal_returns_no_body,
        ),
        (
            "crud::decimals_and_unicode_are_stored_exactly",
            crud::decimals_and_unicode_are_stored_exactly,
        ),
        (
            "crud::the_type_listing_pages_through_a_stable_snapshot",
            crud::the_type_listing_pages_through_a_stable_snapshot,
        ),
        (
            "bundles::a_transaction_assigns_ids_and_rewrites_urn_references",
            bundles::a_transaction_assigns_ids_and_rewrites_urn_references,
        ),
        (
            "bundles::a_transaction_with_one_bad_entry_changes_nothing",
            bundles::a_transaction_with_one_bad_entry_changes_nothing,
        ),
        ("bundles::malformed_bundles_are_refused", bundles::malformed_bundles_are_refused),
        (
            "bundles::a_batch_reports_each_entry_and_keeps_the_good_ones",
            bundles::a_batch_reports_each_entry_and_keeps_the_good_ones,
        ),
        ("bundles::a_transaction_can_delete_and_read", bundles::a_transaction_can_delete_and_read),
        (
            "real_data::medium_loaded_through_transaction_bundles_reads_back_exactly",
            real_data::medium_loaded_through_transaction_bundles_reads_back_exactly,
        ),
        (
            "real_data::small_loaded_through_batch_bundles_reads_back_exactly",
            real_data::small_loaded_through_batch_bundles_reads_back_exactly,
        ),
    ]);
}

#[test]
fn the_type_filter_and_hardening_tests_pass_on_postgres() {
    on_postgres(&[
        ("typefilter::type_filter_queries_select_exactly_what_an_independent_reading_of_the_data_selects", typefilter::type_filter_queries_select_exactly_what_an_independent_reading_of_the_data_selects),
        ("typefilter::type_filter_queries_encoded_inside_the_value_are_decoded_as_query_strings", typefilter::type_filter_queries_encoded_inside_the_value_are_decoded_as_query_strings),
        ("typefilter::type_filters_or_within_a_type_and_leave_other_types_alone", typefilter::type_filters_or_within_a_type_and_leave_other_types_alone),
        ("hardening::over_deep_json_is_refused_at_every_write_path_and_what_is_stored_exports", hardening::over_deep_json_is_refused_at_every_write_path_and_what_is_stored_exports),
        ("hardening::a_finished_export_answers_its_manifest_on_the_first_poll", hardening::a_finished_export_answers_its_manifest_on_the_first_poll),
        ("hardening::fuzzed_writes_never_get_a_5xx_and_everything_stored_exports", hardening::fuzzed_writes_never_get_a_5xx_and_everything_stored_exports),
        ("hardening::group_patients_that_are_not_members_are_reported_under_lenient_handling", hardening::group_patients_that_are_not_members_are_reported_under_lenient_handling),
    ]);
}
